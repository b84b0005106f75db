"""Privacy of synthetic data: nearest-neighbour audit against the training images."""
