"""Settings: every tunable in one pydantic-settings class (env prefix MNIST_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def decode_cost_mib(pixels: int) -> int:
    from service.decode import decode_cost

    return -(-decode_cost(pixels, 1) // (1 << 20))


def _default_repository() -> Path:
    # The shipped models/ beside the package in a checkout; the working directory otherwise.
    checkout = Path(__file__).resolve().parent.parent / "models"
    return checkout if checkout.is_dir() else Path("models")


class Settings(BaseSettings):
    """Server configuration; built once in `__main__` (or by tests) and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="MNIST_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="Open Inference Protocol gRPC port (0 = off)."
    )
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    model_repository: Path = Field(
        default_factory=_default_repository, description="Root of <name>/<version>/ folders."
    )
    model_name: str = Field("mnist-cnn", description="Model folder under the repository.")
    model_version: str | None = Field(
        None, description="Pinned version; newest available when unset."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    half_precision: bool = Field(False, description="float16 forward on CUDA.")
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads per worker; 0 = cores / workers."
    )
    optimize: bool = Field(True, description="Freeze and optimise the TorchScript graph.")
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, le=100, description="Python's GIL switch interval (default 5 ms is slow)."
    )

    max_batch_size: int = Field(64, ge=1, le=4096, description="Images per forward pass.")
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="Longest wait for more work once a batch has started forming."
    )
    max_queue_size: int = Field(
        4096, ge=1, description="Images queued or in the model per worker; beyond it 503."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Per-request deadline (504).")
    batching: bool = Field(True, description="Coalesce concurrent requests into batches.")
    inline_when_idle: bool = Field(
        True,
        description="CPU: a one-image request from a client that has the worker to itself "
        "runs its forward pass on the event loop, skipping two thread hand-offs.",
    )
    preprocess_threads: int = Field(2, ge=1, le=64, description="Image decoding threads.")

    max_files: int = Field(64, ge=1, description="Images per request.")
    max_file_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Bytes per image file.")
    max_request_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Bytes per request body.")
    max_image_pixels: int = Field(
        16_000_000,
        ge=1,
        description="Pixels decoded per image (w x h; for JPEG after libjpeg's reduced-scale "
        "decoding, so bigger phone photos fit).",
    )
    max_image_aspect: float = Field(
        32.0, ge=1, description="Longest over shortest side, for images over 1024 px."
    )
    decode_memory_mib: int = Field(
        320,
        ge=16,
        description="Memory the images being decoded may hold at once, per worker; a decode "
        "waits for room, an image that could never fit is refused (413).",
    )
    max_image_frames: int = Field(100, ge=1, description="Frames in an animated image.")

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error."
    )
    log_json: bool = Field(False, description="One JSON object per log line.")
    access_log: bool = Field(True, description="One log line per request.")
    api_keys: str = Field("", description="Comma-separated API keys, or @/path/to/file.")
    admin_key: str = Field("", description="Enables /admin routes when set.")
    cors_origins: str = Field("", description="Comma-separated allowed origins; off when empty.")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans and metrics (needs an OTel SDK "
        "configured). Off: /metrics covers serving, and the check costs ~4 us per request.",
    )
    drain_timeout_s: float = Field(20.0, ge=0, description="Graceful-shutdown drain bound.")

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda"}:
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_batch_wait_ms / 1000 >= self.request_timeout_s:
            raise ValueError("max_batch_wait_ms must be shorter than request_timeout_s")
        if self.max_file_bytes > self.max_request_bytes:
            raise ValueError("max_file_bytes cannot exceed max_request_bytes")
        if decode_cost_mib(self.max_image_pixels) > self.decode_memory_mib:
            raise ValueError(
                f"decode_memory_mib must be at least {decode_cost_mib(self.max_image_pixels)} "
                "for images of max_image_pixels"
            )
        if self.max_batch_size > self.max_queue_size:
            raise ValueError("max_queue_size must be at least max_batch_size")
        return self

    def api_key_list(self) -> list[str]:
        """Keys from the comma list or, with a leading @, from a file (one per line)."""
        raw = self.api_keys.strip()
        if raw.startswith("@"):
            raw = Path(raw[1:]).read_text(encoding="utf-8").replace("\n", ",")
        return [k.strip() for k in raw.split(",") if k.strip()]
