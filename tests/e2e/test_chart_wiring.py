"""The Helm chart's rendered workloads, run as local processes (mediasearch.dev.chart_wiring): the
migration hook, Triton's stand-in on its Service's ports, two shard servers, the gateway, the
indexer and the compactor, each with the command, arguments, settings and probes the chart gives
it; then an image put into the bucket is found through the gateway, and the helm test pod passes."""

from __future__ import annotations

from pathlib import Path

from mediasearch.dev.chart_wiring import wiring
from mediasearch.export.micro.scenes import read_gallery, write_gallery
from tests.support.postgres import Postgres


def test_the_cpu_profile_runs_as_rendered_and_finds_an_image_put_into_the_bucket(
    micro_repository: Path, tmp_path: Path, postgres: Postgres, endpoint: str
) -> None:
    write_gallery(tmp_path / "gallery", 1, seed=3)
    item = read_gallery(tmp_path / "gallery")[0]
    with postgres() as url, wiring(micro_repository, url, endpoint, tmp_path / "work") as release:
        names = {p.name for p in release.pods}
        assert {"mediasearch-shard-0-0", "mediasearch-shard-1-0"} <= names
        assert {
            "mediasearch-gateway-0",
            "mediasearch-indexer-0",
            "mediasearch-compactor-0",
        } <= names
        release.check_search(item.image.read_bytes(), item.caption)
