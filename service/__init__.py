"""mnist-serving: a model server for handwritten digits."""

__version__ = "0.1.0"
