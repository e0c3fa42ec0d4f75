"""Typed, frozen settings read from ``MEDIASEARCH_*`` environment variables.

Read once at start-up with :func:`load_settings` (never at import); a command-line option is
applied on top with :meth:`Settings.with_overrides`. Every service gets the same object; tests
build their own with keyword overrides.

This class is the one source of defaults. The option objects of the parts (query limits, pipeline
options, encoder batching, index build config...) are built from it (``from_settings``), and
:meth:`Settings.defaults` (the documented defaults, never the environment) stands in where a
library caller gives none. ``docs/operations.md`` lists every setting, generated from the field
descriptions below (``python -m mediasearch.dev.settings_doc``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import secrets
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mediasearch.errors import ConfigError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Everything a mediasearch process can be told from outside."""

    model_config = SettingsConfigDict(env_prefix="MEDIASEARCH_", frozen=True, extra="forbid")

    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Triton model repository holding the exported encoders and the model manifest.",
    )
    model_name: str = Field(
        default="clip", description="Prefix of the Triton models: <name>_text, <name>_vision."
    )
    max_image_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="Larger images are refused.")
    max_image_pixels: int = Field(
        default=64_000_000, gt=0, description="Decompression-bomb guard: images with more pixels are refused."
    )
    max_image_aspect: float = Field(
        default=500.0,
        ge=1.0,
        description="Images more than this many times longer than wide (or wider than long) are "
        "refused: degenerate strips such as 1 x 60,000,000 (CLIP sees only the centred square).",
    )
    triton_grpc_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC address (host:port).")
    triton_http_port: int = Field(
        default=8000, ge=0, le=65535, description="HTTP port of `mediasearch triton` (the local server)."
    )
    triton_grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port of `mediasearch triton` (the local server)."
    )
    triton_metrics_port: int = Field(
        default=8002, ge=0, le=65535, description="Metrics port of `mediasearch triton` (the local server)."
    )
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="Servers (gateway, shard server): after SIGTERM, report not-ready but keep serving "
        "this long, so load balancers and Kubernetes endpoints stop sending calls first (the chart: 5).",
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="Servers: then refuse new calls and give the calls in flight this long to finish.",
    )
    log_level: LogLevel = Field(
        default="INFO", description="Log level of every command (-v on the command line: DEBUG)."
    )

    # -- encoders (embedded ONNX Runtime, or Triton) ----------------------------------------
    encoder: Literal["local", "triton"] = Field(
        default="local", description="local: ONNX Runtime in-process (embedded); triton: Triton over gRPC."
    )
    encoder_max_batch: int = Field(default=32, gt=0, description="Largest in-process micro-batch.")
    encoder_max_wait_ms: float = Field(
        default=2.0, ge=0, description="How long a lone request waits for batch-mates (micro-batchers)."
    )
    encoder_pass_cost_tokens: int = Field(
        default=64,
        ge=0,
        description="Text batches are cut by length where padding costs more token-rows (0: never cut).",
    )
    encoder_max_inflight: int = Field(
        default=2, gt=0, description="In-process forward passes per tower running at once."
    )
    encoder_ort_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per in-process pass (0: cores / passes in flight)."
    )
    image_decode_threads: int = Field(
        default=4, gt=0, description="Threads decoding and resizing query images in the gateway."
    )
    image_decode_workers: int = Field(
        default=0, ge=0, description="Indexer: images decoded at once, one per worker (0: one per core)."
    )
    image_decode_pool: Literal["process", "thread"] = Field(
        default="process",
        description="Indexer: decode workers are processes (off the GIL) or threads of the indexer.",
    )
    image_decode_exact: bool = Field(
        default=False,
        description="Decode large images at full size as CLIP's reference does, instead of reduced "
        "(JPEG DCT scaling, then box reduction): 5x slower on 12 Mpx photos, within a few 1/255.",
    )
    thumbnail_size: int = Field(
        default=256,
        ge=0,
        le=512,
        description="Indexer: longest side in pixels of the WebP thumbnail stored with each indexed image "
        "(0: none). Made from the reduced decode, which holds at least 224 px on a side: up to 512 px.",
    )
    triton_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Deadline of one encode call to Triton (32 ViT-B/32 images take ~10 s on 2 CPU cores).",
    )
    triton_retries: int = Field(default=3, ge=0, description="Retries (backoff) while Triton is unavailable.")
    triton_text_bucket: int = Field(
        default=8, ge=1, description="Text rows sent to Triton are padded to a multiple of this many tokens."
    )
    triton_client_batching: bool = Field(
        default=True, description="Coalesce this process's concurrent queries before sending them to Triton."
    )
    triton_image_bytes: bool = Field(
        default=False,
        description="Send encoded JPEG/PNG files to the <name>_vision_bytes ensemble (DALI decodes them on "
        "Triton's GPU) instead of decoding them here, when the model was exported with `--dali`. Other "
        "images (GIF, WebP, alpha, CMYK, 16-bit) and any the ensemble refuses are still decoded here.",
    )
    triton_flavour: Literal["cpu", "gpu", "tensorrt"] = Field(
        default="cpu", description="Model config flavour `mediasearch triton` starts the local server with."
    )
    triton_ort_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads in the local Triton's CPU models (0: all cores)."
    )

    # -- gateway (issue 7) --------------------------------------------------------------------
    gateway_host: str = Field(default="127.0.0.1", description="Address the search gateway binds.")
    gateway_port: int = Field(default=50051, ge=0, le=65535, description="Search gateway gRPC port.")
    gateway_metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="Prometheus /metrics HTTP port of the gateway (0: off)."
    )
    gateway_http_port: int = Field(
        default=8080,
        ge=-1,
        le=65535,
        description="HTTP/JSON API and search page port of the gateway (0: a free one; -1: off).",
    )
    gateway_http_public_url: str = Field(
        default="",
        description="The HTTP port's address as clients reach it (https://search.example.com): makes "
        "thumbnail links absolute. Empty: links are paths on the HTTP port.",
    )
    gateway_max_top_k: int = Field(default=100, gt=0, le=1000, description="Largest top_k a caller may ask.")
    gateway_max_query_chars: int = Field(default=1000, gt=0, description="Longer query texts are refused.")
    gateway_deadline_s: float = Field(
        default=5.0, gt=0, description="Server-side deadline of one search (the caller's, if shorter, wins)."
    )
    gateway_max_active: int = Field(
        default=32,
        gt=0,
        description="Searches running at once (enough to keep the encoder's batches full).",
    )
    gateway_max_inflight: int = Field(
        default=256, gt=0, description="Searches waiting for a turn; more are refused (RESOURCE_EXHAUSTED)."
    )
    gateway_max_candidates: int = Field(
        default=10_000,
        gt=0,
        le=10_000,
        description="Most candidates one search may draw from the shards while filtering and paging.",
    )
    gateway_oversample: float = Field(
        default=4.0, ge=1.0, description="With filters, first draw this many candidates per wanted result."
    )
    gateway_token_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key signing page tokens; every gateway replica must share it. Required in "
        "cluster mode; an embedded gateway without one makes a random key per process.",
    )
    gateway_token_secret_previous: SecretStr | None = Field(
        default=None,
        description="The key before the current one: its tokens are still accepted (rotation without "
        "breaking pagination); drop it once its pages are stale.",
    )
    gateway_presign_urls: bool | None = Field(
        default=None,
        description="Return presigned HTTPS URLs for S3 images (else s3:// URLs). Must be set in "
        "cluster mode (a presigned URL hands out the original); embedded: true.",
    )
    gateway_url_expiry_s: int = Field(default=3600, gt=0, description="Lifetime of presigned URLs.")
    gateway_auth: Literal["required", "off"] | None = Field(
        default=None,
        description="API keys (authorization: Bearer <key>): required, or off. Unset: required in "
        "cluster mode, off for an embedded gateway on a loopback address.",
    )
    gateway_insecure: bool = Field(
        default=False,
        description="Let a gateway without API keys bind a non-loopback address (`serve --insecure`).",
    )
    gateway_keys_refresh_s: float = Field(
        default=2.0, gt=0, le=5.0, description="How often a gateway re-reads the API keys (revocations)."
    )
    gateway_rate_rps: float = Field(
        default=50.0, ge=0, description="Requests per second one API key may make (0: unlimited)."
    )
    gateway_rate_burst: int = Field(
        default=100, gt=0, description="Requests one API key may make at once above its rate."
    )
    gateway_reflection: bool = Field(default=False, description="Serve gRPC server reflection.")
    gateway_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain the gateway serves TLS with (re-read on change).",
    )
    gateway_tls_key: Path | None = Field(default=None, description="PEM key of the gateway's certificate.")
    gateway_tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle; set: callers must show a certificate it signed (mTLS).",
    )
    internal_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA that signs the shard servers' and Triton's certificates; set: gateway and "
        "indexer connect to them with TLS.",
    )
    internal_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain the internal servers serve TLS with: `mediasearch shard-server` "
        "and `mediasearch triton` (re-read on change).",
    )
    internal_tls_key: Path | None = Field(default=None, description="PEM key of the internal certificate.")
    api_key: SecretStr | None = Field(
        default=None, description="Client side (`mediasearch query`): the API key sent to the gateway."
    )
    tls_ca: Path | None = Field(
        default=None,
        description="Client side (`mediasearch query`): PEM CA the gateway's TLS is checked with.",
    )
    gateway_log_json: bool = Field(default=False, description="Log one JSON object per line.")
    images_root: Path | None = Field(
        default=None,
        description="Embedded mode: the local folder images were indexed from (their file:// URLs).",
    )

    # -- vector index (segments, shards, router, compactor) ---------------------------------
    database_url: str = Field(
        default="sqlite:///mediasearch.db",
        description="Metadata + segment manifest database (sqlite:///file.db or postgresql://...).",
    )
    segment_store_url: str = Field(
        default="file://segments",
        description="Where segment files live: file://<folder> or s3://<bucket>/<prefix>.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (moto, MinIO); None means AWS itself."
    )
    segment_cache_dir: Path = Field(
        default=Path(".segment-cache"),
        description="Local folder a shard downloads remote segments into (memory-mapped from there).",
    )
    num_shards: int = Field(default=1, gt=0, description="How many shards the image ids are spread over.")
    partitioner: str = Field(default="hash", description="Image id -> shard rule: hash or date.")
    index_encoding: str = Field(
        default="SQ8",
        description="Vector codes in an index generation's lists: SQ8 (default; re-ranked exactly), Flat, "
        "SQfp16, SQ4 or PQ<m>.",
    )
    index_nlist_factor: float = Field(
        default=4.0, ge=1.0, le=16.0, description="nlist = factor * sqrt(N), rounded to a power of two."
    )
    index_train_per_list: int = Field(
        default=64, ge=39, description="Training vectors per inverted list (sampled from the index)."
    )
    index_mmap_ivf: bool = Field(
        default=False, description="Memory-map IVF segments too (faster start, ~4x slower FAISS search)."
    )
    index_generation_min: int = Field(
        default=20_000,
        ge=1_000,
        description="Vectors from which the first index generation (one trained coarse quantizer whose lists "
        "the shards own) replaces the exact layout. Checked by `mediasearch compact`.",
    )
    index_rebalance_imbalance: float = Field(
        default=1.3,
        gt=1.0,
        description="Rebuild the generation when the largest shard holds this many times the mean.",
    )
    index_rebalance_growth: float = Field(
        default=4.0,
        gt=1.0,
        description="Rebuild the generation (more lists) when the index holds this many times the vectors it "
        "was trained on.",
    )
    search_nprobe: int = Field(
        default=16,
        gt=0,
        description="Default inverted lists probed per query, in the whole index (the router sends each "
        "shard the probed lists it owns). 16 of 4096 gave recall@10 0.974 with re-ranking on bench-index's "
        "1M out-of-distribution queries (8: 0.939).",
    )
    search_ef: int = Field(
        default=128,
        gt=0,
        description="Default HNSW efSearch of a graph quantizer (the layout before generations).",
    )
    search_rerank: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Candidates kept per result by compressed code and re-scored exactly against the stored "
        "vectors (2: the top 20 of each shard for k=10; on bench-index's 1M queries 2 and 4 gave the same "
        "recall@10, 0.957 at nprobe 10).",
    )
    shard_poll_interval_s: float = Field(
        default=0.5, gt=0, description="How often a shard server re-reads the manifest."
    )
    shard_host: str = Field(default="127.0.0.1", description="Address `mediasearch shard-server` binds.")
    shard_port: int = Field(
        default=7001, ge=0, le=65535, description="Port of `mediasearch shard-server` (0: a free one)."
    )
    shard_workers: int = Field(default=8, gt=0, description="Search threads of a shard server.")
    shard_addresses: tuple[str, ...] = Field(
        default=(),
        description='One entry per shard, replicas separated by "|": ["h1:7001|h2:7001", "h3:7002"] (JSON).',
    )
    router_deadline_s: float = Field(default=1.0, gt=0, description="Deadline for one fan-out search.")
    router_allow_partial: bool = Field(
        default=False, description="Return results flagged partial when a whole shard is unreachable."
    )
    compact_min_segments: int = Field(
        default=4, ge=2, description="A shard is compacted once it has this many small segments."
    )
    compact_max_vectors: int = Field(
        default=4_000_000,
        ge=1,
        description="The largest segment a merge writes; bigger segments are left alone. A merge "
        "holds its inputs' source vectors twice in memory (4 x dim x 2 bytes a vector).",
    )
    generation_keep_s: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="How long the generation a model switch retired keeps its files, so that "
        "`mediasearch generation rollback` can return to it (seconds; 0: no rollback).",
    )
    gc_grace_s: float = Field(
        default=3600.0, ge=0, description="Unreferenced segment files younger than this are left alone."
    )

    # -- ingestion (issue 6) ------------------------------------------------------------------
    sqs_endpoint_url: str | None = Field(
        default=None, description="SQS endpoint (moto, ElasticMQ); None means MEDIASEARCH_S3_ENDPOINT_URL."
    )
    indexer_queue_url: str | None = Field(
        default=None,
        description="SQS queue receiving the bucket's S3 event notifications (mediasearch indexer).",
    )
    indexer_dlq_url: str | None = Field(
        default=None,
        description="Dead-letter queue the indexer moves poison messages to; None: rely on the queue's "
        "redrive policy.",
    )
    indexer_max_receives: int = Field(
        default=5, ge=1, description="A message received this many times without success is poison."
    )
    indexer_visibility_timeout_s: int = Field(
        default=20,
        ge=5,
        le=43_200,
        description="Visibility of received messages, extended by heartbeats while in flight: a crashed "
        "indexer's messages go to another worker after at most this long.",
    )
    indexer_stop_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="After SIGTERM the indexer finishes what it holds for this long, then releases "
        "the rest to other workers at once (keep it below the pod's termination grace period).",
    )
    indexer_wait_time_s: int = Field(default=10, ge=0, le=20, description="SQS long-poll wait per receive.")
    indexer_retry_delay_s: int = Field(
        default=15,
        ge=0,
        le=43_200,
        description="A message that could not be processed now (its object, the database, the encoder "
        "or the store unavailable) reappears after this, doubled at each later receive (at most 15 min).",
    )
    indexer_batch_size: int = Field(default=32, gt=0, description="Images per encoder call.")
    indexer_batch_wait_ms: float = Field(
        default=100.0, ge=0, description="How long a partial batch waits for more images before encoding."
    )
    indexer_fetch_concurrency: int = Field(
        default=16, gt=0, description="Downloads (and decodes queued behind them) in flight at once."
    )
    indexer_queue_items: int = Field(
        default=128, gt=0, description="Bound of each queue between stages (backpressure)."
    )
    indexer_commit_max_items: int = Field(
        default=512, gt=0, description="Most images published in one transaction (one segment per shard)."
    )
    indexer_local_bucket: str = Field(
        default="local", description="Bucket name recorded for images indexed from a local folder."
    )
    indexer_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port of `mediasearch indexer` (0: off)."
    )
    indexer_metrics_host: str = Field(
        default="127.0.0.1", description="Address of the indexer's and the compactor's /metrics."
    )
    compactor_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Prometheus /metrics port of `mediasearch compact --every` (0: off).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def cluster_mode(self) -> bool:
        """A gateway over shard servers (``MEDIASEARCH_SHARD_ADDRESSES``), not an embedded one."""
        return bool(self.shard_addresses)

    def token_secrets(self) -> tuple[str, ...]:
        """The page-token keys: the current one first, then the previous one if any. Without a
        current key (embedded only; cluster mode refuses to start): one random key per process."""
        current = self.gateway_token_secret.get_secret_value() if self.gateway_token_secret else ""
        previous = self.gateway_token_secret_previous
        keys = (current or _process_token_key(), previous.get_secret_value() if previous else "")
        return tuple(key for key in keys if key)

    @classmethod
    def defaults(cls) -> Settings:
        """The documented defaults, without reading the environment."""
        return _defaults()

    def with_overrides(self, **overrides: object) -> Settings:
        """A validated copy with ``overrides`` applied; None means "not given" and is skipped."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **given})
        except ValidationError as exc:
            raise _config_error(exc) from exc


@functools.cache
def _process_token_key() -> str:
    return secrets.token_urlsafe(32)


@functools.cache
def _defaults() -> Settings:
    return Settings.model_construct()  # field defaults only: no environment, no validation needed


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (``MEDIASEARCH_*``), with explicit overrides on top.

    A ``MEDIASEARCH_*`` variable that names no setting is refused (a typo in a ConfigMap would
    otherwise fall back to the default without a word)."""
    known = {f"MEDIASEARCH_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(name for name in os.environ if name.startswith("MEDIASEARCH_") and name not in known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(
            f"unknown settings: {', '.join(hints)}; every setting is listed in docs/operations.md"
        )
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _config_error(exc) from exc


def _config_error(exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"MEDIASEARCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    )
    return ConfigError(f"invalid settings: {problems}")


class FromSettings:
    """Base of the option objects built from :class:`Settings` (frozen dataclasses).

    ``from_settings`` reads the fields a part needs; ``defaults(**changes)`` is ``from_settings``
    over :meth:`Settings.defaults` with some fields changed (library callers and tests)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        raise NotImplementedError

    @classmethod
    def defaults(cls, **changes: Any) -> Self:
        return dataclasses.replace(cls.from_settings(Settings.defaults()), **changes)  # type: ignore[type-var]
