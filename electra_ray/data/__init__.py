"""Ray Data assembly of the data stages and their pure per-document functions."""
