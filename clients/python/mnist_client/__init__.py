"""A small Python client for mnist-serving: no torch, just httpx (numpy and Pillow optional)."""

from mnist_client._bulk import FileResult
from mnist_client._client import AsyncClient, Client
from mnist_client._types import (
    NOT_A_DIGIT,
    ClientError,
    DigitRead,
    FeedbackResult,
    ModelRef,
    Prediction,
    PredictResult,
    TopK,
)

#: Semantic versioning: the major version changes only for a break in this API.
__version__ = "1.1.0"
__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "DigitRead",
    "FeedbackResult",
    "FileResult",
    "ModelRef",
    "NOT_A_DIGIT",
    "Prediction",
    "PredictResult",
    "TopK",
    "__version__",
]
