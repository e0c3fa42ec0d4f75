"""The whole cluster on loopback for development and end-to-end tests (``make up``).

One supervisor starts, in order: moto (S3 + SQS in server mode, with the image bucket's
ObjectCreated/ObjectRemoved notifications delivered to the indexer's queue), the metadata database
(PostgreSQL, migrated), Triton (CPU flavour, micro model), the shard servers, the indexer
(``mediasearch indexer``), the compactor (``mediasearch compact --every 10``) and the search
gateway (``mediasearch serve``). Segments live in S3.
Each child runs in its own session (a terminal's Ctrl-C reaches only the supervisor, which then
stops the children in reverse order with SIGTERM, killing what does not exit) and is told by the
kernel to terminate if the supervisor dies (PR_SET_PDEATHSIG), so nothing outlives it. A child
that crashes (or is killed by a test) is restarted on the same port after a short backoff.
Addresses are written to ``<workdir>/cluster.json`` for clients and tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mediasearch.dev.processes import free_port
from mediasearch.dev.triton import LocalTriton, TritonOptions
from mediasearch.errors import MediaSearchError, Unavailable

log = logging.getLogger(__name__)

IMAGE_BUCKET = "mediasearch-images"
SEGMENT_BUCKET = "mediasearch-segments"
QUEUE = "mediasearch-events"
DLQ = "mediasearch-events-dlq"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class ClusterOptions:
    workdir: Path
    repository: Path
    database_url: str = "postgresql://postgres@127.0.0.1:5432/mediasearch_up"
    num_shards: int = 2
    free_ports: bool = False  # every port chosen free (tests); else the documented defaults
    gateway_port: int = 50051
    metrics_port: int = 9108
    indexer_metrics_port: int = 9109
    shard_base_port: int = 7001
    moto_port: int = 5055
    triton_ports: tuple[int, int, int] = (8000, 8001, 8002)
    indexer: bool = True
    triton_threads: int = 1


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = 0.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class DevCluster:
    options: ClusterOptions
    children: dict[str, Child] = field(default_factory=dict)
    triton: LocalTriton | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        o = self.options
        o.workdir.mkdir(parents=True, exist_ok=True)
        port = lambda p: free_port() if o.free_ports else p  # noqa: E731
        moto_port, gateway_port, metrics_port = port(o.moto_port), port(o.gateway_port), port(o.metrics_port)
        indexer_metrics_port = port(o.indexer_metrics_port)
        shard_ports = [port(o.shard_base_port + s) for s in range(o.num_shards)]
        try:
            endpoint = self._start_moto(moto_port)
            queue_url = _configure_aws(endpoint)
            _prepare_database(o.database_url)
            ports = (0, 0, 0) if o.free_ports else o.triton_ports
            self.triton = LocalTriton(
                TritonOptions(
                    o.repository,
                    http_port=ports[0],
                    grpc_port=ports[1],
                    metrics_port=ports[2],
                    ort_threads=o.triton_threads,
                    log_file=o.workdir / "triton.log",
                )
            ).start()
            env = {
                **AWS_ENV,
                "MEDIASEARCH_DATABASE_URL": o.database_url,
                "MEDIASEARCH_MODEL_REPOSITORY": str(o.repository.resolve()),
                "MEDIASEARCH_SEGMENT_STORE_URL": f"s3://{SEGMENT_BUCKET}/segments",
                "MEDIASEARCH_S3_ENDPOINT_URL": endpoint,
                "MEDIASEARCH_SQS_ENDPOINT_URL": endpoint,
                "MEDIASEARCH_INDEXER_QUEUE_URL": queue_url,
                "MEDIASEARCH_NUM_SHARDS": str(o.num_shards),
                "MEDIASEARCH_SEGMENT_CACHE_DIR": str((o.workdir / "cache").resolve()),
                "MEDIASEARCH_ENCODER": "triton",
                "MEDIASEARCH_TRITON_GRPC_URL": self.triton.grpc_url,
                "MEDIASEARCH_SHARD_POLL_INTERVAL_S": "0.5",
                "MEDIASEARCH_ROUTER_ALLOW_PARTIAL": "true",
                "MEDIASEARCH_GATEWAY_PORT": str(gateway_port),
                "MEDIASEARCH_GATEWAY_METRICS_PORT": str(metrics_port),
                "MEDIASEARCH_SHARD_ADDRESSES": json.dumps([f"127.0.0.1:{p}" for p in shard_ports]),
            }
            for s, p in enumerate(shard_ports):
                self._spawn(f"shard-{s}", ["shard-server", "--shard", str(s), "--port", str(p)], env)
            if o.indexer:
                self._spawn("indexer", ["indexer", "--metrics-port", str(indexer_metrics_port)], env)
                # merges the indexer's small per-batch segments as they accumulate
                self._spawn("compactor", ["compact", "--every", "10"], env)
            self._spawn("gateway", ["serve"], env)
            _wait_tcp("127.0.0.1", gateway_port, 90, self.children["gateway"])
        except BaseException:
            self.stop()
            raise
        self.info = {
            "gateway": f"127.0.0.1:{gateway_port}",
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "indexer_metrics": f"http://127.0.0.1:{indexer_metrics_port}/metrics" if o.indexer else None,
            "shards": [f"127.0.0.1:{p}" for p in shard_ports],
            "triton": self.triton.grpc_url,
            "s3_endpoint": endpoint,
            "bucket": IMAGE_BUCKET,
            "queue_url": queue_url,
            "database_url": o.database_url,
            "pids": self.pids(),
            "logs": str(o.workdir.resolve()),
        }
        self.write_info()
        return self.info

    def pids(self) -> dict[str, int]:
        pids = {name: c.proc.pid for name, c in self.children.items() if c.proc is not None}
        if self.triton is not None and self.triton.pid is not None:
            pids["triton"] = self.triton.pid
        return pids

    def write_info(self) -> None:
        self.info["pids"] = self.pids()
        path = self.options.workdir / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=1))
        tmp.replace(path)

    def _start_moto(self, port: int) -> str:
        self._spawn("moto", ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, module=True)
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(f"{endpoint}/moto-api/", 30, self.children["moto"])
        return endpoint

    def _spawn(self, name: str, args: list[str], env: dict[str, str], *, module: bool = False) -> Child:
        child = self.children.get(name) or Child(
            name,
            args if module else ["-m", "mediasearch.cli", *args],
            env,
            self.options.workdir / f"{name}.log",
        )
        self.children[name] = child
        with child.log_path.open("ab") as out:
            child.proc = subprocess.Popen(
                [sys.executable, *child.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **child.env},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child.started = time.monotonic()
        log.info("started %s (pid %d)", name, child.proc.pid)
        return child

    # -- run -----------------------------------------------------------------------------------
    def supervise(self, poll_s: float = 0.5) -> None:
        """Restart crashed children until :meth:`request_stop`; returns when asked to stop."""
        while not self._stopping.wait(poll_s):
            for child in list(self.children.values()):
                if child.proc is None or child.proc.poll() is None:
                    continue
                if time.monotonic() - child.started < 1.0:
                    continue
                log.warning("%s exited with %s; restarting", child.name, child.proc.returncode)
                child.restarts += 1
                self._spawn(child.name, child.args, child.env)
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
            if child.name == "moto":
                continue
            _terminate(child, timeout_s)
        if self.triton is not None:
            self.triton.stop()
        if "moto" in self.children:
            _terminate(self.children["moto"], timeout_s)


def _terminate(child: Child, timeout_s: float) -> None:
    proc = child.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %.0fs; killing it", child.name, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_http(url: str, timeout_s: float, child: Child) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.poll() is not None:
            raise Unavailable(f"{child.name} exited; see {child.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise Unavailable(f"{child.name} did not answer at {url} within {timeout_s:.0f}s")


def _wait_tcp(host: str, port: int, timeout_s: float, child: Child) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.poll() is not None:
            raise Unavailable(f"{child.name} exited; see {child.log_path}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.1)
    raise Unavailable(f"{child.name} is not listening on {host}:{port} after {timeout_s:.0f}s")


def _configure_aws(endpoint: str) -> str:
    """Buckets, the event queue (+ dead letters) and the bucket's notifications; the queue URL."""
    import boto3

    kwargs: dict[str, Any] = {"endpoint_url": endpoint, "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
                              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
    s3, sqs = boto3.client("s3", **kwargs), boto3.client("sqs", **kwargs)
    for bucket in (IMAGE_BUCKET, SEGMENT_BUCKET):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=DLQ)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=QUEUE,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=IMAGE_BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    return str(queue_url)


def _prepare_database(url: str) -> None:
    """Create the PostgreSQL database if it does not exist, and migrate it."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from mediasearch.metadata.db import make_engine, migrate, normalise_url, translated

    if url.startswith(("postgresql", "postgres")):
        target = make_url(normalise_url(url))
        admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False),
                            isolation_level="AUTOCOMMIT")  # fmt: skip
        with translated(f"creating database {target.database}"), admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            )
            if exists.first() is None:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
        admin.dispose()
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
