"""Triton's model configuration and statistics extensions, as plain dicts.

One definition for both front ends: REST returns the dicts as JSON, gRPC parses them into
the protobuf messages of the same names (field names match Triton's JSON mapping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.wire.codec.v2 import OUTPUTS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from service.config import Settings
    from service.serving.model import Classifier

_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8"}


def model_config(clf: Classifier, settings: Settings) -> dict[str, Any]:
    """Triton ModelConfig: dims exclude the batch dimension, as in Triton."""
    return {
        "name": clf.name,
        "platform": clf.card.platform,
        "backend": "pytorch",
        "max_batch_size": settings.max_batch_size,
        "input": [
            {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]},
            {"name": "image", "data_type": "TYPE_STRING", "dims": [1]},
        ],
        "output": [
            {"name": name, "data_type": _TYPES[datatype], "dims": row or [1]}
            for name, (datatype, row, _) in OUTPUTS.items()
        ],
        "dynamic_batching": {
            "preferred_batch_size": [settings.max_batch_size],
            "max_queue_delay_microseconds": int(settings.max_batch_wait_ms * 1000),
        },
    }


def _duration(registry: CollectorRegistry, histogram: str) -> dict[str, int]:
    count = registry.get_sample_value(f"{histogram}_count") or 0.0
    total = registry.get_sample_value(f"{histogram}_sum") or 0.0
    return {"count": int(count), "ns": int(total * 1e9)}


def model_statistics(clf: Classifier, registry: CollectorRegistry) -> dict[str, Any]:
    """Triton ModelStatistics of this worker process, read from its Prometheus collectors.

    inference_count counts images and execution_count forward passes, as in Triton;
    `success` is the forward passes and their time (requests are counted in /metrics);
    last_inference is not tracked and stays 0.
    """
    labels = {"model": clf.name, "version": clf.version}
    images = registry.get_sample_value("mnist_images_predicted_total", labels) or 0.0
    forward = _duration(registry, "mnist_inference_seconds")
    return {
        "model_stats": [
            {
                "name": clf.name,
                "version": clf.version,
                "inference_count": int(images),
                "execution_count": forward["count"],
                "inference_stats": {
                    "success": forward,
                    "fail": {"count": 0, "ns": 0},
                    "queue": _duration(registry, "mnist_queue_wait_seconds"),
                    "compute_input": _duration(registry, "mnist_preprocess_seconds"),
                    "compute_infer": forward,
                    "compute_output": {"count": 0, "ns": 0},
                },
                "batch_stats": [],
            }
        ]
    }
