"""electra_ray: Japanese ELECTRA pretraining from the Wikipedia dump, on Ray."""

__version__ = "0.1.0"
