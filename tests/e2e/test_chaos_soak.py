"""Short versions of ``make chaos`` and ``make soak`` on one cluster as a deployment runs it (two
shard servers per shard, two gateways, PostgreSQL of the test's own): the same code as the
benchmarks (:mod:`mediasearch.dev.chaos`, :mod:`mediasearch.dev.soak`) with a compressed schedule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediasearch.dev.chaos import Chaos, ChaosPlan
from mediasearch.dev.soak import SoakPlan, run_soak
from mediasearch.dev.workload import LoadCluster, load_cluster

# a killed indexer's messages come back after the visibility timeout: 8 s instead of 20 here
ENV = {"MEDIASEARCH_INDEXER_VISIBILITY_TIMEOUT_S": "8"}


@pytest.fixture(scope="module")
def load(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadCluster]:
    with load_cluster(micro_repository, tmp_path_factory.mktemp("load"), env=ENV) as running:
        yield running


def test_chaos_loses_duplicates_and_resurrects_nothing_and_fails_no_search_outside_outages(
    load: LoadCluster,
) -> None:
    plan = ChaosPlan(
        faults=("indexer-kill", "shard-kill", "postgres-restart", "rolling-restart"),
        gap_s=3.0,
        pg_down_s=2.0,
        min_ready_s=2.0,
        key_quiet_s=15.0,
        recovery_timeout_s=90.0,
        settle_timeout_s=60.0,
    )
    said: list[str] = []
    report = Chaos(load, plan, said.append).run()
    lines = "\n".join([*said, *report.lines, report.summary()])
    summary = report.summary()
    assert re.fullmatch(
        r"chaos: images=\d+ deleted=\d+ lost=0 duplicated=0 resurrected=0 searches=\d+ failed=0 "
        r"partial=\d+ recovery_max_s=[\d.]+",
        summary,
    ), lines
    assert not report.hung, lines
    assert report.audit.images > 20 and report.audit.deleted > 0, lines  # the load did happen
    rolling = [s for s in report.steps if s.name.startswith("rolling-restart ")]
    assert len(rolling) >= 9 and all(s.failed == 0 for s in rolling), lines
    # the indexer and a shard replica came back by themselves; the kills were real
    assert {s.target for s in report.steps} >= {"indexer", "shard-0-r1", "postgres"}, lines


def test_soak_answers_every_request_with_the_expected_code(load: LoadCluster) -> None:
    said: list[str] = []
    report = run_soak(load, SoakPlan(seconds=30.0, callers=64, settle_timeout_s=60.0), said.append)
    lines = "\n".join([*said, *report.lines, report.summary()])
    assert re.fullmatch(
        r"soak: seconds=30 searches=\d+ unexpected_codes=0 p99_first_min_ms=\d+ p99_last_min_ms=\d+ "
        r"rss_growth_mb=-?[\d.]+",
        report.summary(),
    ), lines
    invalid = [o for o in report.outcomes if o.expected == "INVALID_ARGUMENT"]
    assert len(report.outcomes) > 500 and invalid, lines  # 64 callers, both kinds of request
    assert report.audit.clean, lines
