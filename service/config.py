"""Settings: every tunable in one pydantic-settings class (env prefix MNIST_)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from service.serving.keys import KeyRing


def decode_cost_mib(pixels: int) -> int:
    from service.vision.decode import decode_cost

    return -(-decode_cost(pixels, 1) // (1 << 20))


def _default_repository() -> Path:
    """`models/` of the checkout, else `./models`"""
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
    grpc_reflection: bool = Field(
        True, description="gRPC server reflection, for grpcurl, Postman and Evans (false = off)."
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="uvicorn worker processes; 0 (default) = one per CPU of the quota.",
    )
    model_repository: Path = Field(
        default_factory=_default_repository, description="Root of <name>/<version>/ folders."
    )
    model_name: str = Field("mnist-cnn", description="Model folder under the repository.")
    model_version: str | None = Field(
        None,
        description="Pinned default version; newest served when unset. It must be one the "
        "version policy serves (with the default policy it is the one served).",
    )
    version_policy: str | None = Field(
        None,
        description="Versions loaded and served at once, as Triton's version_policy: "
        "`latest:N` (the N newest; with a pinned version, the N newest up to it), `all`, or "
        "`specific:1,3`. Unset: `latest:1`. Requests pick one with `version`; the newest "
        "served (or the pinned one) is the default.",
    )
    max_model_memory_mib: int = Field(
        512,
        ge=1,
        description="Estimated memory of every version the policy serves, together; over it "
        "the server does not start (a reload is refused). Each version is estimated from its "
        "model file (docs/limits.md).",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    half_precision: bool = Field(False, description="float16 forward on CUDA.")
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads per worker; 0 = CPUs of the quota / workers."
    )
    optimize: bool = Field(True, description="Freeze and optimise the TorchScript graph.")
    model_runtime: Literal["auto", "torchscript", "aoti", "onnx"] = Field(
        "auto",
        description=(
            "What runs the forward: auto = the artifact of the version (ONNX model.onnx, "
            "AOTInductor model.pt2) that fits this server and was measured fastest, if faster "
            "than TorchScript, else model.pt; torchscript = model.pt; aoti or onnx = that "
            "artifact or refuse the version."
        ),
    )
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, le=100, description="Python's GIL switch interval (default 5 ms is slow)."
    )

    max_batch_size: int = Field(64, ge=1, le=4096, description="Images per forward pass.")
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="Longest wait for more work once a batch has started forming."
    )
    max_queue_size: int = Field(
        8192,
        ge=1,
        description="Hard bound on images being decoded or queued per worker (memory); "
        "admission also refuses (503) work whose expected wait passes the deadline.",
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
    max_inflight_body_mib: int = Field(
        256,
        ge=1,
        description="Request bodies a worker holds at once (declared sizes, from the first "
        "byte until the answer); past it new uploads get 503. A request alone always passes.",
    )
    max_image_pixels: int = Field(
        16_000_000,
        ge=1,
        description="Pixels decoded per image (w x h; for JPEG after libjpeg's reduced-scale "
        "decoding, so bigger phone photos fit).",
    )
    max_request_pixels: int = Field(
        256_000_000,
        ge=1,
        description="Pixels decoded per request, all its images together (413 beyond).",
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

    connection_limits: bool = Field(
        True,
        description="Enforce the header, body and connection limits below "
        "(service/http/protocol.py); off = uvicorn's plain httptools protocol.",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Request line and header bytes per request; beyond it 431 (414 for the URL).",
    )
    max_header_count: int = Field(
        100, ge=1, le=10_000, description="Header fields per request; beyond it 431."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="From connection open (or a request's first byte) to the end of its "
        "headers; then 408, or a silent close if nothing came.",
    )
    body_timeout_s: float = Field(
        20.0, gt=0, description="Longest pause between request body bytes; then 408."
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest time a client may leave its answer unread once the socket's "
        "send buffer is full; then the connection is closed.",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="Idle keep-alive connections are closed after this."
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Open connections per worker, lowered to fit RLIMIT_NOFILE; beyond it "
        "503 and close.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug, info, warning or error."
    )
    log_json: bool = Field(False, description="One JSON object per log line.")
    access_log: bool = Field(True, description="One log line per request.")
    log_queue_records: int = Field(
        10_000, ge=1, description="Log records waiting for a slow log reader; beyond it dropped."
    )
    api_keys: str = Field(
        "",
        description="Comma-separated API keys, or @/path/to/file (one per line); named "
        "key-1, key-2, ... in logs and metrics, without limits.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="TOML or JSON file of named API keys, each with optional limits "
        "(requests per second and burst, images per minute, concurrent requests; "
        "docs/operations.md). Re-read on SIGHUP.",
    )
    admin_key: str = Field("", description="Enables /admin routes when set.")
    cors_origins: str = Field("", description="Comma-separated allowed origins; off when empty.")
    forwarded_allow_ips: str = Field(
        "",
        description="Peers trusted to say who the client is in X-Forwarded-For (comma-"
        "separated IPs or CIDRs, '*' for any): their forwarded address is the client for "
        "fair sharing and logs. Empty (default): the peer address, headers ignored.",
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's own OpenTelemetry instrumentation (its route spans and "
        "metrics, reported to the provider that the OTEL_* variables configure), on top of "
        "the server's spans. It takes every request off the /v1/predict lane. Off: the "
        "check costs ~4 us per request.",
    )
    feedback: bool = Field(
        False,
        description="Keep every /v1 answer (request id, index, version, answer, confidence, "
        "kind, time) and take its truth at POST /v1/feedback; live accuracy in /metrics.",
    )
    feedback_path: Path = Field(
        Path("feedback.db"),
        description="The SQLite file (WAL) the workers of one server share, when "
        "feedback_url is empty; created with its folder.",
    )
    feedback_url: str = Field(
        "",
        description="A PostgreSQL URL (postgresql://user:password@host:5432/db) instead of "
        "SQLite, for replicas that share one store; needs the `postgres` extra (psycopg 3).",
    )
    feedback_retention_h: float = Field(
        168.0, gt=0, description="Answers older than this are pruned; feedback on them is 404."
    )
    feedback_max_rows: int = Field(
        1_000_000, ge=1, description="Answers kept at most; the oldest beyond it are pruned."
    )
    feedback_window_h: float = Field(
        24.0,
        gt=0,
        description="The sliding window (by answer time) of the accuracy, rejection and "
        "calibration figures in /metrics.",
    )
    feedback_refresh_s: float = Field(
        15.0, gt=0, description="How often each worker recomputes those figures from the store."
    )
    feedback_queue_requests: int = Field(
        10_000,
        ge=1,
        description="Requests' answers waiting to be written, per worker; beyond it they are "
        "dropped and counted, never waited for.",
    )
    shadow_version: str | None = Field(
        None,
        description="A candidate version run beside the served one on sampled requests "
        "after they are answered; its answers are only compared (needs feedback on).",
    )
    shadow_rate: float = Field(
        0.1, ge=0, le=1, description="Share of /v1 requests the shadow version also reads."
    )
    drain_timeout_s: float = Field(20.0, ge=0, description="Graceful-shutdown drain bound.")
    reload_timeout_s: float = Field(
        60.0,
        gt=0,
        description="With several workers, how long POST /admin/reload waits for every "
        "worker to load the new version before it answers 503.",
    )

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda"}:
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @field_validator("version_policy")
    @classmethod
    def _policy_syntax(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from service.serving.repository import VersionPolicy

        return str(VersionPolicy.parse(value))  # ValueError names what is wrong

    @field_validator("api_keys")
    @classmethod
    def _some_key_when_set(cls, value: str) -> str:
        # Fail closed: a value that parses to no key would silently turn authentication off.
        if value:
            try:
                keys = _parse_api_keys(value)
            except OSError as exc:
                raise ValueError(f"cannot read the API keys file: {exc}") from exc
            if not keys:
                raise ValueError("set but holds no key; leave it empty to turn API keys off")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _key_file_reads(cls, value: Path | None) -> Path | None:
        if value is not None:
            from service.serving.keys import read_key_file

            read_key_file(value)  # fail at start-up, naming the problem
        return value

    @field_validator("admin_key")
    @classmethod
    def _admin_key_not_blank(cls, value: str) -> str:
        if value and not value.strip():
            raise ValueError("is whitespace only; leave it empty to turn /admin off")
        return value

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
        if self.feedback_url and not self.feedback_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("feedback_url must be a postgresql:// URL (empty = SQLite)")
        if self.feedback_window_h > self.feedback_retention_h:
            raise ValueError("feedback_window_h cannot exceed feedback_retention_h")
        if self.shadow_version is not None:
            if not (self.shadow_version.isascii() and self.shadow_version.isdigit()):
                raise ValueError("shadow_version must be a version number")
            if not self.feedback:
                raise ValueError("shadow_version needs feedback on (MNIST_FEEDBACK=true)")
        return self

    def api_key_list(self) -> list[str]:
        """Keys from the comma list or, with a leading @, from a file (one per line)."""
        return _parse_api_keys(self.api_keys)

    def key_ring(self) -> KeyRing:
        """Every configured key, listed and named, read now (start-up and SIGHUP)."""
        from service.serving.keys import key_ring

        return key_ring(self.api_key_list(), self.api_keys_file)


def _parse_api_keys(value: str) -> list[str]:
    raw = value.strip()
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text(encoding="utf-8").replace("\n", ",")
    return [k.strip() for k in raw.split(",") if k.strip()]


_DOC_HEAD = """\
# Configuration

Every setting is a field of `service.config.Settings` (pydantic-settings). A value comes, from
highest to lowest priority, from a flag of `python -m service` (every setting has one:
`--max-batch-size 32`; yes/no settings as `--batching` / `--no-batching`; `--help` lists
them), the environment variable in the table, a `.env` file in the working directory, or the
default. An invalid value or an inconsistent combination stops the server at start-up with
one line naming the setting. [limits.md](limits.md) explains each limit: what it protects,
why its default, and what a client sees.

Tracing is not a setting here: it is configured by OpenTelemetry's standard environment
variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, ...)
and is off while no OTLP endpoint is set; [operations.md](operations.md#tracing) lists them.

Generated from `Settings` by `python -m service.config > docs/configuration.md`; a test
fails when this file and the code disagree.

| setting | env var | default | meaning |
|---|---|---|---|
"""


def _shown_default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return (field.default_factory.__doc__ or "computed").strip()
    value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def configuration_markdown() -> str:
    """docs/configuration.md: how settings are read, and one table row per Settings field."""
    rows = []
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", r"\|")  # a pipe would split the cell
        rows.append(f"| `{name}` | `MNIST_{name.upper()}` | {_shown_default(name)} | {meaning} |")
    return _DOC_HEAD + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(configuration_markdown())
