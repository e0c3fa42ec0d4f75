"""The whole cluster on loopback for development, end-to-end tests and benchmarks (``make up``).

One supervisor starts, in order: moto (S3 + SQS in server mode, the image bucket's
ObjectCreated/ObjectRemoved notifications delivered to the indexer's queue), the metadata database
(PostgreSQL, created and migrated), Triton (CPU flavour), the shard servers, the indexer
(``mediasearch indexer``), the compactor (``mediasearch compact --every 10``) and the search
gateway (``mediasearch serve``). Segments live in S3 (or a folder: ``segment_store_url``).

Every process is a :class:`~mediasearch.dev.processes.Child` of the development harness: its own
session (a terminal's Ctrl-C reaches only the supervisor, which stops the children newest first),
told by the kernel to exit if the supervisor dies. A child that crashes (or is killed by a test)
is restarted on the same port after a short backoff. Addresses and pids are written to
``<workdir>/cluster.json`` for clients and tests, logs to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediasearch.dev import emulated_aws
from mediasearch.dev.postgres import prepare_database
from mediasearch.dev.processes import Child, free_ports, mediasearch_command
from mediasearch.dev.triton import LocalTriton, TritonOptions
from mediasearch.errors import MediaSearchError
from mediasearch.settings import Settings

log = logging.getLogger(__name__)

IMAGE_BUCKET = "mediasearch-images"
SEGMENT_BUCKET = "mediasearch-segments"
QUEUE = "mediasearch-events"
UP_DATABASE = "postgresql://postgres@127.0.0.1:5432/mediasearch_up"
RESTART_AFTER_S = 1.0
DEFAULTS = Settings.defaults()  # a child is restarted no sooner than this after it started


@dataclass(frozen=True)
class ClusterOptions:
    """What to run. Gateway and Triton ports come from the settings (``MEDIASEARCH_GATEWAY_PORT``...);
    ``free_ports`` picks free ones for every process instead (tests, benchmarks)."""

    workdir: Path
    repository: Path
    database_url: str = UP_DATABASE
    num_shards: int = 2
    free_ports: bool = False
    shard_base_port: int = DEFAULTS.shard_port
    moto_port: int = 5055
    indexer_metrics_port: int = 9109
    indexer: bool = True
    compactor: bool = True
    gateway: bool = True
    segment_store_url: str | None = None  # None: s3://mediasearch-segments/segments on the emulator
    shard_workers: int = DEFAULTS.shard_workers
    triton_threads: int = 1  # ONNX Runtime threads per Triton model (0: the cores)
    env: Mapping[str, str] = field(default_factory=dict)  # more MEDIASEARCH_* for every service
    # API keys: off on this loopback cluster unless asked; with auth, an admin key is made at start
    # and written to cluster.json ("api_key") for the tools that drive the cluster
    auth: bool = False


@dataclass
class DevCluster:
    options: ClusterOptions
    settings: Settings = field(default_factory=Settings.defaults)
    children: dict[str, Child] = field(default_factory=dict)
    triton: LocalTriton | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start everything and wait until the servers listen; the addresses (also in
        ``cluster.json``). On any failure, what was started is stopped again."""
        o, s = self.options, self.settings
        o.workdir.mkdir(parents=True, exist_ok=True)
        wanted = [o.moto_port, s.gateway_port, s.gateway_metrics_port, o.indexer_metrics_port]
        wanted += [o.shard_base_port + i for i in range(o.num_shards)]
        ports = free_ports(len(wanted)) if o.free_ports else wanted
        moto_port, gateway_port, metrics_port, indexer_metrics_port, *shard_ports = ports
        try:
            endpoint = self._start_moto(moto_port)
            bucket = self._create_buckets(endpoint)
            prepare_database(o.database_url)
            api_key = self._admin_key() if o.auth else None
            self.triton = LocalTriton(self._triton_options()).start()
            env = self._service_env(endpoint, bucket.queue_url, shard_ports, gateway_port, metrics_port)
            servers = {}
            for i, port in enumerate(shard_ports):
                argv = mediasearch_command("shard-server", shard=i, port=port, workers=o.shard_workers)
                servers[self._spawn(f"shard-{i}", argv, env)] = port
            if o.indexer:
                self._spawn("indexer", mediasearch_command("indexer", metrics_port=indexer_metrics_port), env)
            if o.compactor:  # merges the indexer's small per-batch segments as they accumulate
                self._spawn("compactor", mediasearch_command("compact", every=10), env)
            if o.gateway:
                servers[self._spawn("gateway", mediasearch_command("serve"), env)] = gateway_port
            for child, port in servers.items():
                child.wait_tcp(port, timeout_s=90)
        except BaseException:
            self.stop()
            raise
        self.info = {
            "gateway": f"127.0.0.1:{gateway_port}" if o.gateway else None,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics" if o.gateway else None,
            "indexer_metrics": f"http://127.0.0.1:{indexer_metrics_port}/metrics" if o.indexer else None,
            "shards": [f"127.0.0.1:{p}" for p in shard_ports],
            "triton": self.triton.grpc_url,
            "s3_endpoint": endpoint,
            "bucket": IMAGE_BUCKET,
            "queue_url": bucket.queue_url,
            "database_url": o.database_url,
            "segment_store_url": env["MEDIASEARCH_SEGMENT_STORE_URL"],
            "pids": self.pids(),
            "logs": str(o.workdir.resolve()),
            "api_key": api_key,
        }
        self.write_info()
        return self.info

    def _admin_key(self) -> str:
        from mediasearch.metadata.api_keys import create_key
        from mediasearch.metadata.db import migrated_engine, session_factory

        with migrated_engine(self.options.database_url) as engine, session_factory(engine).begin() as session:
            return create_key(session, f"dev-cluster-{secrets.token_hex(4)}", ["admin"])

    def _triton_options(self) -> TritonOptions:
        o, s = self.options, self.settings
        ports = (0, 0, 0) if o.free_ports else (s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port)
        return TritonOptions(
            o.repository,
            name=s.model_name,
            http_port=ports[0],
            grpc_port=ports[1],
            metrics_port=ports[2],
            ort_threads=o.triton_threads,
            log_file=o.workdir / "triton.log",
        )

    def _service_env(
        self, endpoint: str, queue_url: str, shard_ports: list[int], gateway_port: int, metrics_port: int
    ) -> dict[str, str]:
        o = self.options
        assert self.triton is not None
        settings = {
            "DATABASE_URL": o.database_url,
            "MODEL_REPOSITORY": str(o.repository.resolve()),
            "MODEL_NAME": self.settings.model_name,
            "SEGMENT_STORE_URL": o.segment_store_url or f"s3://{SEGMENT_BUCKET}/segments",
            "S3_ENDPOINT_URL": endpoint,
            "SQS_ENDPOINT_URL": endpoint,
            "INDEXER_QUEUE_URL": queue_url,
            "NUM_SHARDS": str(o.num_shards),
            "SEGMENT_CACHE_DIR": str((o.workdir / "cache").resolve()),
            "ENCODER": "triton",
            "TRITON_GRPC_URL": self.triton.grpc_url,
            "SHARD_POLL_INTERVAL_S": "0.5",
            "ROUTER_ALLOW_PARTIAL": "true",
            "GATEWAY_PORT": str(gateway_port),
            "GATEWAY_METRICS_PORT": str(metrics_port),
            "SHARD_ADDRESSES": json.dumps([f"127.0.0.1:{p}" for p in shard_ports]),
            # cluster mode has no default for these: a page-token key for this cluster's lifetime
            "GATEWAY_TOKEN_SECRET": secrets.token_urlsafe(32),
            "GATEWAY_PRESIGN_URLS": "true",
            "GATEWAY_AUTH": "required" if o.auth else "off",
        }
        return {**emulated_aws.ENV, **{f"MEDIASEARCH_{k}": v for k, v in settings.items()}, **o.env}

    def pids(self) -> dict[str, int]:
        pids = {name: c.pid for name, c in self.children.items() if c.pid is not None}
        if self.triton is not None and self.triton.pid is not None:
            pids["triton"] = self.triton.pid
        return pids

    def write_info(self) -> None:
        self.info["pids"] = self.pids()
        path = self.options.workdir / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)  # it may hold the cluster's admin key
        tmp.write_text(json.dumps(self.info, indent=1))
        tmp.replace(path)

    @staticmethod
    def _create_buckets(endpoint: str) -> emulated_aws.NotifyingBucket:
        """The image bucket, its queues and notification, and the segment bucket (idempotent)."""
        return emulated_aws.NotifyingBucket.create(
            endpoint, IMAGE_BUCKET, queue=QUEUE, max_receives=5, also=(SEGMENT_BUCKET,)
        )

    def _restarted(self, child: Child) -> None:
        """What a restarted child needs besides its process: the emulator keeps everything in
        memory, so a restarted one gets its buckets, queues and notification back (their objects are
        gone; the indexer and shard servers then find their queue and bucket again by themselves)."""
        if child.name != "moto" or not self.info.get("s3_endpoint"):
            return
        endpoint = self.info["s3_endpoint"]
        try:
            child.wait_http(f"{endpoint}/moto-api/", timeout_s=30)
            self._create_buckets(endpoint)
            log.warning("moto restarted: bucket, queues and notification created again (objects are lost)")
        except MediaSearchError as exc:
            log.error("moto restarted but its buckets could not be created again: %s", exc)

    def _start_moto(self, port: int) -> str:
        child = self._spawn("moto", emulated_aws.moto_command(port), {})
        endpoint = f"http://127.0.0.1:{port}"
        child.wait_http(f"{endpoint}/moto-api/", timeout_s=30)
        return endpoint

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env=env, log_path=self.options.workdir / f"{name}.log")
        self.children[name] = child.start()
        log.info("started %s (pid %s)", name, child.pid)
        return child

    # -- run -----------------------------------------------------------------------------------
    def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``mediasearch up``: start, ``on_ready(info)``, supervise until SIGINT or SIGTERM, stop
        everything (also when starting fails). Call it from the main thread."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.request_stop())
        try:
            info = self.start()
            if on_ready is not None:
                on_ready(info)
            self.supervise()
        finally:
            self.stop()

    def supervise(self, poll_s: float = 0.5) -> None:
        """Restart crashed children until :meth:`request_stop`; returns when asked to stop."""
        while not self._stopping.wait(poll_s):
            for child in list(self.children.values()):
                if child.running() or time.monotonic() - child.started_at < RESTART_AFTER_S:
                    continue
                log.warning("%s exited with %s; restarting", child.name, child.returncode)
                child.start()
                self._restarted(child)
                self.write_info()
            if self.triton is not None and not self.triton.running():
                log.warning("triton exited; restarting")
                try:
                    self.triton.start()
                except MediaSearchError as exc:
                    log.error("triton did not restart: %s (searches answer UNAVAILABLE)", exc)
                self.write_info()

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop everything, newest first: gateway, compactor, indexer, shards, then Triton and moto."""
        self._stopping.set()
        for child in reversed(list(self.children.values())):
            if child.name != "moto":
                child.stop(timeout_s)
        if self.triton is not None:
            self.triton.stop()
        if "moto" in self.children:
            self.children["moto"].stop(timeout_s)
