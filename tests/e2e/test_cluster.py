"""The whole cluster as ``make up`` runs it: moto S3+SQS with notifications, PostgreSQL, Triton,
two shard servers, the indexer and the gateway, all real processes on free loopback ports.

Images go in the way users put them (S3 PUT -> notification -> SQS -> indexer) and come out of
``SearchText`` through the gateway; the micro CLIP makes semantic answers checkable.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from index_support import postgres_available, postgres_database

from mediasearch.client import SearchClient
from mediasearch.errors import Unavailable
from mediasearch.export.micro.scenes import (
    GalleryItem,
    label_matches,
    parse_query,
    read_gallery,
    write_gallery,
)

AWS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    workdir: Path
    client: SearchClient
    s3: Any
    gallery: dict[str, GalleryItem]  # key -> scene

    @property
    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.workdir / "cluster.json").read_text()))

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.info["bucket"], Key=key, Body=data, ContentType="image/jpeg")


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (.ci/run starts it)")
    tmp = tmp_path_factory.mktemp("up")
    write_gallery(tmp / "gallery", 60, seed=21)
    gallery = {f"scenes/{it.image.name}": it for it in read_gallery(tmp / "gallery")}
    with postgres_database() as url:
        workdir = tmp / "work"
        log = (tmp / "up.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mediasearch.cli",
                "up",
                "--free-ports",
                "--workdir",
                str(workdir),
                "--repository",
                str(micro_repository),
                "--database-url",
                url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = None
        try:
            _wait("cluster up", lambda: (workdir / "cluster.json").exists() or proc.poll() is not None, 120)
            assert proc.poll() is None, (tmp / "up.log").read_text()[-4000:]
            info = json.loads((workdir / "cluster.json").read_text())
            client = SearchClient(info["gateway"], timeout_s=10)
            client.wait_ready()
            s3 = boto3.client("s3", endpoint_url=info["s3_endpoint"], **AWS)
            cluster = Cluster(proc, workdir, client, s3, gallery)
            for key, item in gallery.items():
                cluster.put(key, item.image.read_bytes())
            yield cluster
        finally:
            if client is not None:
                client.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _indexed(cluster: Cluster) -> int:
    return int(cluster.client.stats().images_by_status.get("indexed", 0))


def test_an_image_put_into_s3_is_returned_by_search_text_within_seconds(cluster: Cluster) -> None:
    item = next(iter(cluster.gallery.values()))
    key = "fresh/just-uploaded.jpg"
    put = time.monotonic()
    cluster.put(key, item.image.read_bytes())

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


def test_ctrl_c_stops_every_process_of_the_cluster(cluster: Cluster) -> None:
    pids = list(cluster.info["pids"].values())
    cluster.proc.send_signal(signal.SIGINT)
    assert cluster.proc.wait(timeout=60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
