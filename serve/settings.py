"""Gateway settings: typed defaults < DCS_* environment variables < command line.

Every field can be set from the environment as DCS_<FIELD NAME IN CAPITALS> (DCS_API_KEY,
DCS_MAX_BATCH_SIZE, ...); `python -m serve` adds a flag per field (--max-batch-size ...).
The connection limits and timeouts name the nginx / Triton setting they correspond to, with its default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.cli import parse_bool

ENV_PREFIX = "DCS_"
BACKENDS = ("embedded", "triton")


@dataclass(frozen=True)
class Settings:
    backend: str = field(default="embedded", metadata={"help": f"inference backend: one of {BACKENDS}"})
    model_repository: str = field(
        default="model_repository",
        metadata={"help": "model repository (NAME/<version>/metadata.json); the triton backend reads metadata "
                          "from it too, or from Triton itself when it does not exist"})
    triton_url: str = field(default="127.0.0.1:8001", metadata={"help": "Triton gRPC address host:port"})
    triton_timeout_s: float = field(default=10.0, metadata={"help": "timeout of one Triton call, seconds"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    api_key: str = field(default="", metadata={
        "help": "if set, required as X-API-Key or Authorization: Bearer on every route but /healthz and the page's "
                "own files (/, /static/), checked before a request's body is read"})
    open_docs: bool = field(default=False, metadata={
        "help": "with an API key: serve /docs and /openapi.json without it (the API's description, no data)"})
    allowed_hosts: str = field(default="", metadata={
        "help": "comma-separated Host header values answered (names or addresses, without the port; * for any); "
                "other hosts get 400, against DNS rebinding. Empty: the address clients reach the gateway at "
                "(--public-host, else --host; any host when that is 0.0.0.0 or ::), localhost, 127.0.0.1 and ::1"})
    public_host: str = field(default="", metadata={
        "help": "the address clients reach the gateway at, when it differs from --host (a container's published "
                "address); without an API key, the gateway starts only if this (else --host) is loopback"})
    allow_no_api_key: bool = field(default=False, metadata={
        "help": "start without an API key although --host or --public-host is not a loopback address"})
    max_batch_size: int = field(default=64, metadata={"help": "most images per model batch"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "longest wait to fill a batch, milliseconds"})
    queue_size: int = field(default=1024, metadata={"help": "most images waiting per model before 429"})
    batch_concurrency: int = field(default=0, metadata={
        "help": "batches in flight per model (0: 2, one per onnxruntime instance of the embedded backend)"})
    max_image_bytes: int = field(default=10 * 2**20, metadata={"help": "largest encoded image, bytes"})
    max_image_pixels: int = field(default=40_000_000, metadata={"help": "largest decoded image, width * height"})
    max_images_per_request: int = field(default=256, metadata={"help": "most images in one request"})
    max_request_bytes: int = field(default=64 * 2**20, metadata={"help": "largest request body, bytes"})
    default_top_k: int = field(default=3, metadata={"help": "top_k when the request does not say"})
    decode_threads: int = field(default=0, metadata={"help": "image decoding threads (0: min(4, CPUs))"})
    decode_timeout_ms: float = field(default=2000.0, metadata={
        "help": "decode time budget per image; an image over it gets an error entry (a 12-megapixel PNG "
                "decodes in about 0.6 s on one slow core, a JPEG photo in 0.05 s)"})
    max_connections: int = field(default=1000, metadata={
        "help": "open client connections at most (nginx worker_connections: 512; uvicorn: no limit); beyond it the "
                "longest-idle connection is closed, or the newcomer gets 503. Kept under the fd limit (ulimit -n)"})
    header_timeout_s: float = field(default=10.0, metadata={
        "help": "time for a request's line and headers to arrive (nginx client_header_timeout: 60 s)"})
    body_timeout_s: float = field(default=30.0, metadata={
        "help": "longest pause between two reads of a request body (nginx client_body_timeout: 60 s)"})
    shutdown_timeout_s: float = field(default=30.0, metadata={
        "help": "after SIGTERM, how long requests in flight may take to finish; then they are cut and the process "
                "exits (Kubernetes' terminationGracePeriodSeconds: 30 s; uvicorn: no limit)"})
    keepalive_timeout_s: float = field(default=75.0, metadata={
        "help": "idle time before a keep-alive connection is closed (nginx keepalive_timeout: 75 s; uvicorn: 5 s, "
                "shorter than most clients' and load balancers' own, which makes them race the close); idle "
                "connections are closed first when the connection limit is reached"})
    max_header_bytes: int = field(default=16384, metadata={
        "help": "largest request line + headers (nginx large_client_header_buffers: 4 x 8 KiB; h11: 16 KiB)"})
    ort_threads: int = field(default=0, metadata={
        "help": "embedded backend: onnxruntime intra-op threads of a model's sessions together (0: the CPUs this "
                "process may use)"})
    ort_instances: int = field(default=0, metadata={
        "help": "embedded backend: onnxruntime sessions per model that run batches at once, each with "
                "ort_threads / ort_instances threads (0: 2 on a CPU with 2 or more cores, 1 on CUDA; 1: the "
                "lowest latency of one request at a time)"})
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds sent with 429"})
    log_level: str = field(default="info", metadata={
        "help": "log level of uvicorn and the gateway (critical, error, warning, info, debug, trace)"})
    # --- versions, names, operations (issue 14) ---
    repository_poll_s: float = field(default=2.0, metadata={
        "help": "seconds between looks for new or removed model versions (0: never, serve what was there at start)"})
    access_log: bool = field(default=True, metadata={"help": "one log line per request, with its request id"})
    log_format: str = field(default="text", metadata={"help": "log lines as text or json"})
    bulk_output: str = field(default="", metadata={
        "help": "a bulk job's output folder (python -m serve.bulk) for the page to show; empty: none"})
    cors_origins: str = field(default="", metadata={
        "help": "comma-separated origins allowed to call the API from a browser (CORS); empty: none"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {list(BACKENDS)}")
        for name in ("max_batch_size", "queue_size", "max_image_bytes", "max_image_pixels",
                     "max_images_per_request", "max_request_bytes", "default_top_k", "retry_after_s",
                     "max_connections", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "batch_concurrency", "decode_threads", "ort_threads", "ort_instances"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if self.repository_poll_s < 0:
            raise ValueError(f"repository_poll_s must be >= 0, got {self.repository_poll_s}")
        for name in ("decode_timeout_ms", "header_timeout_s", "body_timeout_s", "keepalive_timeout_s",
                     "shutdown_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_images_per_request > self.queue_size:
            raise ValueError(f"max_images_per_request ({self.max_images_per_request}) must not exceed "
                             f"queue_size ({self.queue_size}), or such a request could never be queued")

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def hosts(self) -> frozenset[str] | None:
        """The Host header values answered, lower case and without the port (None: any)."""
        given = {h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",") if h.strip()}
        if not given:
            reached = (self.public_host or self.host).lower().strip("[]")
            if reached in ("0.0.0.0", "::", ""):
                return None
            given = {reached, "localhost", "127.0.0.1", "::1"}
        return None if "*" in given else frozenset(given)

    @property
    def repository_path(self) -> Path:
        return Path(self.model_repository)

    @property
    def concurrency(self) -> int:
        if self.batch_concurrency:
            return self.batch_concurrency
        return self.ort_instances if self.backend == "embedded" and self.ort_instances else 2

    @property
    def threads(self) -> int:
        return self.decode_threads or min(4, os.cpu_count() or 1)

    def exposure_problem(self) -> str | None:
        """Why starting would serve other machines without a key (address not loopback, no API key, not
        allowed), or None. The address is --public-host when set (a container listens on 0.0.0.0 but may
        be published on 127.0.0.1 only), else --host."""
        if self.api_key or self.allow_no_api_key:
            return None
        what, address = ("--public-host", self.public_host) if self.public_host else ("--host", self.host)
        if _is_loopback(address):
            return None
        return (f"{what} {address} is reachable from other machines and no API key is set: set DCS_API_KEY "
                "(--api-key), or DCS_ALLOW_NO_API_KEY=true (--allow-no-api-key true) to serve without one")

    def public(self) -> dict[str, Any]:
        """The settings without secrets (for logs and /models)."""
        values = dataclasses.asdict(self)
        values["api_key"] = "***" if self.api_key else ""
        return values


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _convert(f: dataclasses.Field, text: str) -> Any:
    kind = type(f.default)
    if kind is bool:
        return parse_bool(text)
    return kind(text)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults < DCS_* variables in `environ` (os.environ by default) < `overrides` (None ignored)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in environ:
            try:
                values[f.name] = _convert(f, environ[key])
            except ValueError as err:
                raise ValueError(f"{key}={environ[key]!r}: {err}") from err
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
