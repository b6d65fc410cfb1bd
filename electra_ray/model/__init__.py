"""ELECTRA: generator + discriminator with shared embeddings, masking, the replaced-token-detection loss."""
