"""The reader: uploaded bytes to MNIST-like digits, numbers or "not a digit"."""
