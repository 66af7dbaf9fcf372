"""Compression passes over Keras models, one module per technique; see ``edgec.recipe``."""
