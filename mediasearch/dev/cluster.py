"""The whole cluster on loopback for development, end-to-end tests and benchmarks (``make up``).

One supervisor starts, in order: moto (S3 + SQS in server mode, the image bucket's
ObjectCreated/ObjectRemoved notifications delivered to the indexer's queue), the metadata database
(PostgreSQL, created and migrated), Triton (CPU flavour), the shard servers, the indexer
(``mediasearch indexer``), the compactor (``mediasearch compact --every 10``) and the search
gateway (``mediasearch serve``). Segments live in S3 (or a folder: ``segment_store_url``).

Replicas, as a deployment runs them: ``replicas`` shard servers per shard (children ``shard-{i}``,
then ``shard-{i}-r{j}``; the gateways' ``MEDIASEARCH_SHARD_ADDRESSES`` lists them as ``a|b``, and the
router tries a shard's replicas in turn) and ``gateways`` search gateways (``gateway``,
``gateway-r{j}``; a client spreads its calls over them as a Kubernetes Service would, see
:class:`mediasearch.client.SearchClient`). :meth:`DevCluster.wait_ready` says when a child serves
again after a restart (chaos runs restart them one at a time).

Every process is a :class:`~mediasearch.dev.processes.Child` of the development harness: its own
session (a terminal's Ctrl-C reaches only the supervisor, which stops the children newest first),
told by the kernel to exit if the supervisor dies. A child that crashes (or is killed by a test)
is restarted on the same port after a short backoff. Addresses and pids are written to
``<workdir>/cluster.json`` for clients and tests, logs to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import contextlib
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
from mediasearch.dev.processes import Child, free_ports, http_status, mediasearch_command
from mediasearch.dev.triton import LocalTriton, TritonOptions
from mediasearch.errors import MediaSearchError, Unavailable
from mediasearch.settings import Settings
from mediasearch.signals import StopSignals

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
    replicas: int = 1  # shard servers per shard
    gateways: int = 1  # search gateways, each with every shard's replicas
    free_ports: bool = False
    shard_base_port: int = DEFAULTS.shard_port
    moto_port: int = 5055
    indexer_metrics_port: int = 9109
    indexer: bool = True
    compactor: bool = True
    gateway: bool = True
    segment_store_url: str | None = None  # None: s3://mediasearch-segments/segments on the emulator
    shard_workers: int = DEFAULTS.shard_workers
    compact_every_s: float = 10.0
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
    ports: dict[str, int] = field(default_factory=dict)  # the gRPC port of each server child
    triton: LocalTriton | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _signals: StopSignals = field(default_factory=StopSignals)  # SIGINT/SIGTERM, installed by run()

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start everything and wait until the servers listen; the addresses (also in
        ``cluster.json``). On any failure, what was started is stopped again."""
        o = self.options
        o.workdir.mkdir(parents=True, exist_ok=True)
        moto_port, indexer_metrics_port, gateways, shards = self._ports()
        try:
            endpoint = self._start_moto(moto_port)
            bucket = self._create_buckets(endpoint)
            prepare_database(o.database_url)
            api_key = self._admin_key() if o.auth else None
            self.triton = LocalTriton(self._triton_options()).start()
            env = self._service_env(endpoint, bucket.queue_url, shards)
            for name, port in shards.items():
                shard = int(name.split("-")[1])
                argv = mediasearch_command("shard-server", shard=shard, port=port, workers=o.shard_workers)
                self._spawn(name, argv, env)
                self.ports[name] = port
            if o.indexer:
                self._spawn("indexer", mediasearch_command("indexer", metrics_port=indexer_metrics_port), env)
            if o.compactor:  # merges the indexer's small per-batch segments as they accumulate
                self._spawn("compactor", mediasearch_command("compact", every=f"{o.compact_every_s:g}"), env)
            for name, (port, metrics_port, http_port) in gateways.items():
                argv = mediasearch_command("serve", port=port, metrics_port=metrics_port, http_port=http_port)
                self._spawn(name, argv, env)
                self.ports[name] = port
            for name, port in self.ports.items():
                self.children[name].wait_tcp(port, timeout_s=90)
        except BaseException:
            self.stop()
            raise
        first = next(iter(gateways.values()), None)
        self.info = {
            "gateway": f"127.0.0.1:{first[0]}" if first else None,
            "gateways": [f"127.0.0.1:{port}" for port, _, _ in gateways.values()],
            "page": f"http://127.0.0.1:{first[2]}/" if first else None,
            "http_gateways": [f"http://127.0.0.1:{http}" for _, _, http in gateways.values()],
            "metrics": f"http://127.0.0.1:{first[1]}/metrics" if first else None,
            "indexer_metrics": f"http://127.0.0.1:{indexer_metrics_port}/metrics" if o.indexer else None,
            "shards": shard_addresses(shards, o.num_shards),
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

    def _ports(self) -> tuple[int, int, dict[str, tuple[int, int, int]], dict[str, int]]:
        """moto's, the indexer's metrics, ``{gateway: (grpc, metrics, http)}`` and ``{shard server:
        port}``. Without ``free_ports``: the settings' ports; a further gateway replica j takes
        gateway port + j, metrics port + 10 j and HTTP port + j, shard i's replica j the shard port
        + i + 100 j."""
        o, s = self.options, self.settings
        gateways = [gateway_name(j) for j in range(o.gateways if o.gateway else 0)]
        shards = [shard_name(i, j) for j in range(o.replicas) for i in range(o.num_shards)]
        if o.free_ports:
            n = len(gateways)
            moto, indexer, *rest = free_ports(2 + 3 * n + len(shards))
            triples = list(zip(rest[0 : 3 * n : 3], rest[1 : 3 * n : 3], rest[2 : 3 * n : 3], strict=True))
            shard_ports = rest[3 * n :]
        else:
            moto, indexer = o.moto_port, o.indexer_metrics_port
            triples = [
                (s.gateway_port + j, s.gateway_metrics_port + 10 * j, s.gateway_http_port + j)
                for j in range(len(gateways))
            ]
            shard_ports = [
                o.shard_base_port + i + 100 * j for j in range(o.replicas) for i in range(o.num_shards)
            ]
        return (
            moto,
            indexer,
            dict(zip(gateways, triples, strict=True)),
            dict(zip(shards, shard_ports, strict=True)),
        )

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

    def _service_env(self, endpoint: str, queue_url: str, shards: dict[str, int]) -> dict[str, str]:
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
            "SHARD_ADDRESSES": json.dumps(shard_addresses(shards, o.num_shards)),
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

    def wait_ready(self, name: str, timeout_s: float = 90.0) -> None:
        """Until child ``name`` is running and, for a server, reports SERVING on its gRPC health (a
        shard server: once it has loaded its shard), or Triton reports ready (its models loaded);
        Unavailable after ``timeout_s``."""
        if name == "triton":
            deadline = time.monotonic() + timeout_s
            while self.triton is None or http_status(f"{self.triton.http_url}/v2/health/ready") != 200:
                if time.monotonic() > deadline:
                    raise Unavailable(f"triton not ready after {timeout_s:.0f}s")
                time.sleep(0.1)
            return
        child = self.children[name]
        deadline = time.monotonic() + timeout_s
        while not child.running():  # between its exit and the supervisor's restart
            if time.monotonic() > deadline:
                raise Unavailable(f"{name} not restarted after {timeout_s:.0f}s{child.log_tail(10)}")
            time.sleep(0.05)
        if name in self.ports:
            child.wait_serving(self.ports[name], timeout_s=max(1.0, deadline - time.monotonic()))

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
        with self._signals:  # a second Ctrl-C does not interrupt the stop
            try:
                info = self.start()
                if on_ready is not None:
                    on_ready(info)
                self.supervise()
            finally:
                self.stop()

    def supervise(self, poll_s: float = 0.5) -> None:
        """Restart crashed children until :meth:`request_stop` or a signal (under :meth:`run`);
        returns when asked to stop."""
        while not self._signals.wait(poll_s, also=self._stopping):
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

    def send_signal(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal child ``name`` (or ``triton``): SIGTERM as a rollout stops it, SIGKILL as a crash;
        the supervisor starts it again once it has exited."""
        if name == "triton":
            if self.triton is not None:
                self.triton.send_signal(sig)
            return
        proc = self.children[name].proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

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


def shard_name(shard: int, replica: int = 0) -> str:
    """The child running ``replica`` of ``shard``: ``shard-0``, ``shard-0-r1``..."""
    return f"shard-{shard}" if replica == 0 else f"shard-{shard}-r{replica}"


def gateway_name(replica: int = 0) -> str:
    return "gateway" if replica == 0 else f"gateway-r{replica}"


def shard_addresses(ports: Mapping[str, int], num_shards: int) -> list[str]:
    """``MEDIASEARCH_SHARD_ADDRESSES``: one entry per shard, its replicas joined by ``|``."""
    by_shard: list[list[str]] = [[] for _ in range(num_shards)]
    for name, port in ports.items():
        by_shard[int(name.split("-")[1])].append(f"127.0.0.1:{port}")
    return ["|".join(addresses) for addresses in by_shard]
