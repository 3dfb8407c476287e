"""Settings, read from the environment with the LOSS_SERVICE_ prefix (pydantic-settings)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Per-sample loss histogram buckets: log-spaced, three per decade from 1e-4 to 1e2.
DEFAULT_LOSS_BUCKETS = [round(m * 10.0**e, 12) for e in range(-4, 2) for m in (1.0, 2.5, 5.0)] + [100.0]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSS_SERVICE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address `loss-service serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `loss-service serve` listens on.")
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port for the Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), served by "
        "every worker beside HTTP on LOSS_SERVICE_HOST; unset: no gRPC. 8001 is Triton's.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes for `loss-service serve`.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="uvicorn's and the service's log level; `info` writes one access line per request."
    )
    offload_bytes: int = Field(
        default=1024 * 1024,
        ge=0,
        description="Requests estimated to decode to more than this (parsed arrays; for /v1/evaluate times its "
        "losses) are parsed and computed in a worker thread, off the event loop.",
    )
    shutdown_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds that in-flight requests get to finish after SIGTERM before they are cut off.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Largest request body, after gzip inflation; larger gets 413."
    )
    max_elements: int = Field(
        default=20_000_000, ge=1, description="Most numbers in one array; larger gets 413 before NumPy allocates it."
    )
    engine_threads: int = Field(
        default=0,
        ge=0,
        description="Threads that compute one large batch (from 262,144 values) in parts, bit for bit as one "
        "thread would; 0: the cores this process may use (CPU affinity and cgroup quota) divided among the workers.",
    )
    memory_budget: int = Field(
        default=1024 * 1024 * 1024,
        ge=1,
        description="Bytes of estimated memory (request bodies as they arrive, parsed bodies, the engine's working "
        "arrays, the answers) that one worker's requests may hold at once: a request that needs more alone gets "
        "413, one that does not fit beside the others 503 with Retry-After. Bodies still arriving may hold half of "
        "it together. The default leaves half of the 2 GiB the deploy files give one worker for the process itself.",
    )
    max_connections: int = Field(
        default=0,
        ge=0,
        description="Connections one worker keeps open at once; a request on a connection opened beyond them gets "
        "503 with Retry-After and the connection is closed. 0: one per MiB of LOSS_SERVICE_MEMORY_BUDGET, at least "
        "64 (1,024 for the default budget), the same bound as on request bodies arriving at once.",
    )
    max_concurrent: int = Field(
        default=8, ge=1, description="Heavy requests computed at once per worker; more get 503 with Retry-After."
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's headers, from when it opens or from the "
        "request's first byte; then 408 and the connection is closed.",
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a heavy request may take, body upload included: 408 if the body is still "
        "arriving, 504 if the loss is still computing. Any other request's body has as long to arrive.",
    )
    api_keys: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated API keys, or the path of a file with one per line; when set, /v1 and /v2 "
        "require Authorization: Bearer <key>.",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="A TOML file of scoped keys ([[keys]] with name, key_sha256, scopes, models, rate limits); "
        "reloaded on SIGHUP and when it changes.",
    )
    metrics_auth: bool = Field(default=False, description="Require an API key for /metrics too.")
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's OpenTelemetry instrumentation of each request (spans, metrics, logs), for an "
        "OpenTelemetry SDK configured in the process (e.g. by `opentelemetry-instrument`). Off, FastAPI does not "
        "ask OpenTelemetry on every request whether one is (its cost: docs/performance.md).",
    )
    otlp_metrics: bool = Field(
        default=True,
        description="Where OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) is set, also export "
        'the counters and loss histograms over OTLP/HTTP (docs/monitoring.md, "Without Prometheus: OTLP"); false: '
        "never, whatever the OTEL_ variables say.",
    )
    otlp_shutdown_timeout: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a stopping worker waits for its last OTLP export (what it counted since the export "
        "before) to reach the endpoint.",
    )
    ssl_certfile: str | None = Field(default=None, description="TLS certificate (PEM) for `loss-service serve`.")
    ssl_keyfile: str | None = Field(default=None, description="TLS private key (PEM) for `loss-service serve`.")
    cors_origins: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="Comma-separated origins allowed by CORS; unset: CORS off."
    )
    max_models: int = Field(
        default=100,
        ge=1,
        description="Distinct `model` label values per worker; past it, a new name takes the label of a model "
        "idle for LOSS_SERVICE_MODEL_LABEL_IDLE, or is counted as 'other'.",
    )
    max_models_per_key: int | None = Field(
        default=None,
        ge=1,
        description="With API keys, the `model` label values one key's requests may claim per worker; unset: "
        "LOSS_SERVICE_MAX_MODELS split evenly among the keys in force (at least 1 each). Past it, the key's new "
        "models count as 'other:<key name>'.",
    )
    model_label_idle: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds a model may go without a batch before, with all LOSS_SERVICE_MAX_MODELS labels taken, "
        "a new model name takes its label (and its series are removed).",
    )
    max_segment_values: int = Field(
        default=20,
        ge=1,
        description="Distinct values of each declared segment key, per model label and worker, that "
        "`loss_service_segment_loss` labels; a model's later values are counted as 'other' (and in "
        "`loss_service_segment_value_overflow_total`).",
    )
    model_allowlist: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="Comma-separated model names; when set, any other model is counted as 'other'."
    )
    loss_buckets: Annotated[list[float], NoDecode] = Field(
        default=DEFAULT_LOSS_BUCKETS, description="Comma-separated upper bounds of the per-sample loss histogram."
    )
    metrics_dir: str | None = Field(
        default=None,
        description="Directory where workers share metrics when there is more than one; its metrics files are "
        "removed at start (default: <tmp>/loss-service-metrics-<pid>). One worker keeps its metrics in memory.",
    )

    store_url: str = Field(
        default="sqlite:///data/loss-service.sqlite3",
        description="Where predictions and labels wait for each other: sqlite:///PATH (a file, relative to the "
        "working directory; sqlite:////PATH for an absolute path) for one host, postgresql://USER:PASSWORD@HOST/DB "
        "for replicas on several hosts.",
    )
    store_connections: int = Field(
        default=10,
        ge=1,
        description="Most PostgreSQL connections each worker keeps open in each of its two pools, one for writes "
        "and one for reads; on SQLite, the most read connections (writes go through one).",
    )
    store_read_threads: int = Field(
        default=2,
        ge=1,
        description="Store reads (a model's status, the list of models) each worker runs at once, in threads of "
        "their own; more wait for one without holding a thread. A read costs well under a millisecond whatever "
        "the model's rows: more threads only contend with the event loop for the interpreter.",
    )
    store_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds a store operation may wait for the database (a pooled PostgreSQL connection, a "
        "connection attempt, SQLite's write lock held by another process); then 503 with Retry-After.",
    )
    store_reserve_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Bytes a SQLite store keeps allocated beside its file (`<file>.reserve`) and gives back when "
        "the disk is full, so that DELETE of a model and the retention sweep can still free space (a deletion "
        "writes journal pages: up to about half the deleted rows' size); 0: none.",
    )
    max_pending: int = Field(
        default=1_000_000,
        ge=1,
        description="Most rows per model waiting for their other half (predictions + labels); more get 429.",
    )
    event_max_pending: int = Field(
        default=10_000,
        ge=1,
        description="Most halves of KServe inference-logger events (a request or a response) per model waiting for "
        "their other half; one more gets 429 and is not kept.",
    )
    event_max_pending_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Most bytes of waiting event halves per model (what each keeps of its event: ids, segments or "
        "prediction rows, plus its id and 64 bytes); one more past it gets 429 and is not kept.",
    )
    event_ttl: float = Field(
        default=600.0,
        gt=0,
        description="Seconds an event half waits for its other half; then it expires unmatched (counted in the "
        "model's `expired_events`) and a late other half waits in its turn.",
    )
    quota_models: int = Field(
        default=100,
        ge=1,
        description="Models an API key may hold (those its `models` patterns match; every model for a key without "
        "patterns and for the service without keys), for a key whose entry sets no `max_models`; creating one more "
        "gets 429.",
    )
    quota_stored_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Bytes of stored rows (payloads of pending rows, plus each kept row's id and 64 bytes) an API key "
        "may hold over its models, for a key whose entry sets no `max_stored_bytes`; a write that would pass it gets "
        "429 and stores nothing.",
    )
    quota_row_values: int = Field(
        default=1_000_000,
        ge=1,
        description="Values in one logged prediction or label row, for a key whose entry sets no `max_row_values`; "
        "a wider row gets 422.",
    )
    sweep_interval: float = Field(
        default=60.0, gt=0, description="Seconds between sweeps that remove rows older than their model's retention."
    )
    compare_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between the comparisons /metrics reports: each model's losses against those of every "
        "model its `compare_to` names, over the last 24 h (docs/monitoring.md, 'Champion and challenger').",
    )
    estimate_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between the estimates /metrics reports for each model configured with `estimate`: the "
        "expected loss of the last hour's predictions, and the realized and expected loss of the cohort's joined "
        "pairs (docs/monitoring.md, 'Estimated loss').",
    )
    estimate_cohort: float = Field(
        default=86400.0,
        ge=60,
        description="Seconds of predictions (from the start of a minute) whose joined pairs /metrics compares with "
        "their estimate, for the calibration-drift alert (docs/monitoring.md, 'Estimated loss').",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_or_key_file(cls, value: Any) -> Any:
        """A file path (one key per line; blank lines and `#` comments skipped) or comma-separated
        keys. A setting that yields no key, or a path (anything with a `/`) that names no file, is
        refused: set to nothing, authentication would silently be off, and a missing secrets file
        would become a key."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if "/" in text:
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"no keys file at {text}")
            keys = [line.strip() for line in path.read_text().splitlines()]
            keys = [key for key in keys if key and not key.startswith("#")]
            if not keys:
                raise ValueError(f"the keys file {text} holds no key (blank lines and # comments are skipped)")
            return keys
        keys = [part.strip() for part in text.split(",") if part.strip()]
        if not keys:
            raise ValueError("set but holds no key; unset it to run without authentication")
        return keys

    @field_validator("model_allowlist", "loss_buckets", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()] or None
        return value

    @field_validator("loss_buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if not value or any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("loss buckets must be a non-empty, strictly increasing list")
        return value
