"""Property-based fuzzing of a live embedded gateway: every request message of search.proto, and
raw bytes sent to each method, gets a defined status (never INTERNAL or UNKNOWN) in time, and the
gateway survives with bounded memory and no traceback in its log.

``make fuzz`` runs the same strategies (:mod:`mediasearch.dev.fuzz_requests`) for minutes; here a
bounded number of examples per request kind keeps it to well under a minute. Hypothesis shrinks a
failing call to a small one and prints it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mediasearch.dev.fuzz_gateway import LiveGateway, live_gateway, run_examples
from mediasearch.dev.fuzz_requests import Call, seed_images, strategies

EXAMPLES = {"SearchText": 200, "SearchImage": 150, "GetImage": 60, "Stats": 1, "garbage": 200}


@pytest.fixture(scope="module")
def gateway(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with live_gateway(tmp_path_factory.mktemp("gateway-fuzz"), micro_repository) as running:
        yield running


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_every_request_gets_a_defined_status_in_time(gateway: LiveGateway, kind: str) -> None:
    def check(call: Call) -> None:
        problem = gateway.check(call)
        assert problem is None, problem

    run_examples(strategies(gateway, seed_images())[kind], check, EXAMPLES[kind])


def test_the_gateway_survives_the_fuzzing_with_bounded_memory_and_no_traceback(gateway: LiveGateway) -> None:
    assert gateway.report.calls >= sum(EXAMPLES.values()) // 2
    assert not gateway.health_problems()
