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


def _seconds(registry: CollectorRegistry, labels: dict[str, str], stage: str) -> int:
    total = registry.get_sample_value(
        "mnist_model_request_seconds_total", {**labels, "stage": stage}
    )
    return int((total or 0.0) * 1e9)


def model_statistics(models: list[Classifier], registry: CollectorRegistry) -> dict[str, Any]:
    """Triton ModelStatistics of this worker process for `models` (versions), read from its
    Prometheus collectors.

    inference_count counts images and execution_count forward passes, as in Triton. The
    durations count requests that reached the model, each once per stage, so every count
    equals `success`'s and each stage's time is part of its request's: success (the whole
    request in the data plane), compute_input (reading its files or tensor), queue (waiting
    for a forward pass), compute_infer (its forward passes). Requests that failed are in
    /metrics (`fail` stays 0), last_inference is not tracked and stays 0.
    """
    stats = []
    for clf in models:
        labels = {"model": clf.name, "version": clf.version}
        get = registry.get_sample_value
        count = int(get("mnist_model_requests_total", labels) or 0.0)
        stage = {
            s: {"count": count, "ns": _seconds(registry, labels, s)}
            for s in ("success", "compute_input", "queue", "compute_infer")  # metrics.STAGES
        }
        stats.append(
            {
                "name": clf.name,
                "version": clf.version,
                "inference_count": int(get("mnist_images_predicted_total", labels) or 0.0),
                "execution_count": int(get("mnist_model_executions_total", labels) or 0.0),
                "inference_stats": {
                    "success": stage["success"],
                    "fail": {"count": 0, "ns": 0},
                    "queue": stage["queue"],
                    "compute_input": stage["compute_input"],
                    "compute_infer": stage["compute_infer"],
                    "compute_output": {"count": 0, "ns": 0},
                },
                "batch_stats": [],
            }
        )
    return {"model_stats": stats}
