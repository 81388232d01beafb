"""Offline training: MNIST in, a TorchScript model and its card out."""
