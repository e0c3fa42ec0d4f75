"""The whole cluster as ``make up`` runs it: moto S3+SQS with notifications, PostgreSQL, Triton,
two shard servers, the indexer and the gateway, all real processes on free loopback ports.

Images go in the way users put them (S3 PUT -> notification -> SQS -> indexer) and come out of
``SearchText`` through the gateway; the micro CLIP makes semantic answers checkable.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mediasearch.client import SearchClient
from mediasearch.dev.cluster import QUEUE
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.processes import Child, mediasearch_command
from mediasearch.errors import Unavailable
from mediasearch.export.micro.scenes import (
    GalleryItem,
    label_matches,
    parse_query,
    read_gallery,
    write_gallery,
)
from tests.support.postgres import Postgres


@dataclass
class Cluster:
    child: Child  # `mediasearch up`
    workdir: Path
    client: SearchClient
    bucket: NotifyingBucket
    gallery: dict[str, GalleryItem]  # key -> scene

    @property
    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.workdir / "cluster.json").read_text()))


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.2)


@contextlib.contextmanager
def make_up(
    repository: Path, database_url: str, tmp: Path, *extra: str
) -> Iterator[tuple[Child, dict[str, Any]]]:
    """``mediasearch up --free-ports`` until the block ends (then Ctrl-C, as a user would)."""
    workdir = tmp / "work"
    argv = mediasearch_command(
        "up", "--free-ports", "--workdir", str(workdir), "--repository", str(repository),
        "--database-url", database_url, *extra,
    )  # fmt: skip
    child = Child("up", argv, log_path=tmp / "up.log").start()
    try:
        child.wait_until(lambda: (workdir / "cluster.json").exists(), 120, "writing cluster.json")
        yield child, json.loads((workdir / "cluster.json").read_text())
    finally:
        child.interrupt()  # what a user does; it stops every child in order
        try:
            child.wait(timeout_s=60)
        finally:
            child.stop()


@pytest.fixture(scope="module")
def cluster(
    micro_repository: Path, tmp_path_factory: pytest.TempPathFactory, postgres: Postgres
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("up")
    write_gallery(tmp / "gallery", 60, seed=21)
    gallery = {f"scenes/{it.image.name}": it for it in read_gallery(tmp / "gallery")}
    with (
        postgres() as url,
        make_up(micro_repository, url, tmp, "--auth") as (child, info),  # keys required, as in production
        SearchClient(info["gateway"], timeout_s=10, api_key=info["api_key"]) as client,
    ):
        client.wait_ready()
        bucket = NotifyingBucket.create(info["s3_endpoint"], info["bucket"], queue=QUEUE, notify=False)
        for key, item in gallery.items():
            bucket.put(key, item.image.read_bytes(), "image/jpeg")
        yield Cluster(child, tmp / "work", client, bucket, gallery)


def _indexed(cluster: Cluster) -> int:
    return int(cluster.client.stats().images_by_status.get("indexed", 0))


def test_an_image_put_into_s3_is_returned_by_search_text_within_seconds(cluster: Cluster) -> None:
    item = next(iter(cluster.gallery.values()))
    key = "fresh/just-uploaded.jpg"
    put = time.monotonic()
    cluster.bucket.put(key, item.image.read_bytes(), "image/jpeg")

    def found() -> bool:
        results = cluster.client.search_text(item.caption, top_k=1, key_prefix="fresh/").results
        return bool(results) and results[0].key == key

    _wait("the new image in SearchText", found, 15)
    assert time.monotonic() - put < 15
    with urllib.request.urlopen(cluster.info["indexer_metrics"], timeout=5) as response:
        metrics = response.read().decode()
    indexed = [
        line
        for line in metrics.splitlines()
        if line.startswith('mediasearch_indexer_images_total{outcome="indexed"}')
    ]
    assert indexed and float(indexed[0].split()[-1]) >= 1, metrics[:2000]


def test_a_semantic_query_returns_matching_scenes(cluster: Cluster) -> None:
    _wait("the gallery indexed", lambda: _indexed(cluster) >= len(cluster.gallery), 60)
    pairs = collections.Counter((it.label.colour, it.label.shape) for it in cluster.gallery.values())
    (colour, shape), count = pairs.most_common(1)[0]
    text = f"{colour} {shape}s"
    response = cluster.client.search_text(text, top_k=3, key_prefix="scenes/")
    assert not response.partial and len(response.results) == 3
    query = parse_query(text)
    good = [r for r in response.results if label_matches(cluster.gallery[r.key].label, query)]
    assert len(good) >= min(2, count), [cluster.gallery[r.key].caption for r in response.results]
    assert response.results[0].url.startswith("http://127.0.0.1")  # presigned on moto


def test_search_is_partial_while_a_shard_server_is_stopped_and_full_after_it_restarts(
    cluster: Cluster,
) -> None:
    _wait("the gallery indexed", lambda: _indexed(cluster) >= len(cluster.gallery), 60)
    text = "a large shape"
    assert not cluster.client.search_text(text).partial
    pid = cluster.info["pids"]["shard-1"]
    os.kill(pid, signal.SIGSTOP)  # stopped: it holds its port but answers nothing
    try:
        response = cluster.client.search_text(text)
        assert response.partial and response.results
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait("full results after SIGCONT", lambda: not cluster.client.search_text(text).partial, 10)
    os.kill(pid, signal.SIGKILL)  # the supervisor restarts it on the same port
    _wait("shard-1 restarted", lambda: cluster.info["pids"]["shard-1"] != pid, 15)

    def full() -> bool:
        response = cluster.client.search_text(text)
        return not response.partial and len(response.results) == 10

    _wait("full results after the restart", full, 30)


def test_search_is_unavailable_while_the_encoder_is_down_and_works_again_after_its_restart(
    cluster: Cluster,
) -> None:
    _wait("the gallery indexed", lambda: _indexed(cluster) >= len(cluster.gallery), 60)
    text = "a small shape"
    assert cluster.client.search_text(text).results
    pid = cluster.info["pids"]["triton"]
    os.kill(pid, signal.SIGKILL)  # the supervisor restarts it; meanwhile nothing encodes
    with pytest.raises(Unavailable, match="Triton"):
        cluster.client.search_text(text)
    _wait("triton restarted", lambda: cluster.info["pids"].get("triton") not in (None, pid), 30)

    def answered() -> bool:
        try:
            return bool(cluster.client.search_text(text).results)
        except Unavailable:
            return False

    _wait("searches answered again", answered, 60)


def test_a_restarted_emulator_gets_its_bucket_queue_and_notification_back(cluster: Cluster) -> None:
    """Last of the module's cluster tests: the emulator keeps objects in memory, so the earlier
    images' originals are gone after this."""
    pid = cluster.info["pids"]["moto"]
    os.kill(pid, signal.SIGKILL)
    _wait("moto restarted", lambda: cluster.info["pids"].get("moto") not in (None, pid), 15)
    item = next(iter(cluster.gallery.values()))
    key = "after-restart/again.jpg"

    def put() -> bool:
        try:
            cluster.bucket.put(key, item.image.read_bytes(), "image/jpeg")
        except Exception:  # the bucket is not there yet
            return False
        return True

    _wait("the bucket back", put, 30)

    def found() -> bool:
        results = cluster.client.search_text(item.caption, top_k=1, key_prefix="after-restart/").results
        return bool(results) and results[0].key == key

    _wait("the image put after the restart found", found, 60)


def test_ctrl_c_stops_every_process_of_the_cluster(
    micro_repository: Path, tmp_path: Path, postgres_url: str
) -> None:
    """A cluster of its own (the module's stays up for the other tests)."""
    with make_up(micro_repository, postgres_url, tmp_path, "--no-indexer") as (child, info):
        pids = list(info["pids"].values())
        assert sorted(info["pids"]) == ["gateway", "moto", "shard-0", "shard-1", "triton"]
        assert all(_alive(pid) for pid in pids)
        child.interrupt()
        assert child.wait(timeout_s=60) == 0
    assert not [pid for pid in pids if _alive(pid)]
    assert "cluster stopped" in (tmp_path / "up.log").read_text()


def _post_mortem(left: dict[str, int], workdir: Path) -> str:
    """What each process left behind was doing (its threads' stacks, when py-spy is at hand) and
    the end of its log: a failure here is a shutdown that hangs, and the stack names where."""
    parts = []
    for name, pid in left.items():
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if Path(spy).exists():
            argv = [spy, "dump", "--pid", str(pid)]
            dump = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            parts.append(f"--- {name} (pid {pid}) stacks:\n{dump.stdout}{dump.stderr}")
        log_file = workdir / f"{name}.log"
        if log_file.exists():
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            parts.append(f"--- {name} log:\n{tail}")
    return "\n".join(parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:  # a zombie not yet reaped has exited
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_a_supervisor_killed_with_sigkill_takes_every_process_of_the_cluster_with_it(
    micro_repository: Path, tmp_path: Path, postgres_url: str
) -> None:
    with make_up(micro_repository, postgres_url, tmp_path, "--no-indexer") as (child, info):
        named = dict(info["pids"])
        pids = list(named.values())
        assert all(_alive(pid) for pid in pids)
        child.kill()  # no chance to stop anything: the kernel tells each child (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 30
        while [pid for pid in pids if _alive(pid)]:
            left = {name: pid for name, pid in named.items() if _alive(pid)}
            if time.monotonic() > deadline:
                pytest.fail(f"left behind: {left}\n{_post_mortem(left, tmp_path / 'work')}")
            time.sleep(0.2)
