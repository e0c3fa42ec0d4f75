"""Admission control: at most max_active searches run; the rest queue; a search that cannot get its
turn before its deadline is refused at once instead of timing out after wasting encoder time."""

from __future__ import annotations

import asyncio

import pytest

from mediasearch.errors import DeadlineExceeded, Overloaded
from mediasearch.gateway.admission import Admission


async def _search(admission: Admission, seconds: float, deadline_in: float, log: list[str]) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with admission.slot(loop.time() + deadline_in):
            assert admission.active <= admission.max_active
            await asyncio.sleep(seconds)
        log.append("ok")
    except Overloaded:
        log.append("refused")
    except DeadlineExceeded:
        log.append("timeout")


def test_overload_is_refused_at_once_while_admitted_searches_complete() -> None:
    """20 searches of 1 s, 2 at a time, 3.5 s to live: about 6 fit. The others are refused before
    the first admitted search is done, instead of waiting out their deadline."""

    async def go() -> tuple[list[str], list[float]]:
        admission = Admission(max_active=2, initial_service_s=1.0)
        log: list[str] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        refused_after: list[float] = []

        async def one() -> None:
            await _search(admission, 1.0, 3.5, log)
            if log[-1] == "refused":
                refused_after.append(loop.time() - started)

        await asyncio.gather(*(one() for _ in range(20)))
        return log, refused_after

    log, refused_after = asyncio.run(go())
    assert 2 <= log.count("ok") <= 6 and log.count("timeout") == 0
    assert log.count("ok") + log.count("refused") == 20
    assert refused_after and max(refused_after) < 1.0  # all refused while the first pair still ran


def test_queued_searches_get_their_turn_when_the_deadline_allows() -> None:
    async def go() -> list[str]:
        admission = Admission(max_active=2, initial_service_s=0.02)
        log: list[str] = []
        await asyncio.gather(*(_search(admission, 0.02, 2.0, log) for _ in range(10)))
        return log

    assert asyncio.run(go()) == ["ok"] * 10


def test_a_full_queue_refuses_even_with_time_to_spare() -> None:
    async def go() -> list[str]:
        admission = Admission(max_active=1, max_queued=2, initial_service_s=0.001)
        log: list[str] = []
        await asyncio.gather(*(_search(admission, 0.05, 10.0, log) for _ in range(5)))
        return log

    log = asyncio.run(go())
    assert log.count("refused") == 2 and log.count("ok") == 3


@pytest.mark.parametrize("service", [0.02, 0.1])
def test_service_time_estimate_follows_observed_searches(service: float) -> None:
    async def go() -> float:
        admission = Admission(max_active=4, initial_service_s=0.05)
        for _ in range(25):
            await _search(admission, service, 5.0, [])
        return admission.service_s

    assert asyncio.run(go()) == pytest.approx(service, rel=0.35)


def test_under_load_a_search_whose_turn_comes_too_late_is_dropped_without_running() -> None:
    async def go() -> tuple[list[str], int]:
        admission = Admission(max_active=1, initial_service_s=0.01)
        ran = 0
        log: list[str] = []

        async def one(seconds: float, deadline_in: float) -> None:
            nonlocal ran
            loop = asyncio.get_running_loop()
            try:
                async with admission.slot(loop.time() + deadline_in):
                    ran += 1
                    await asyncio.sleep(seconds)
                log.append("ok")
            except DeadlineExceeded:
                log.append("late")

        # the first holds the slot 0.2 s; the estimate (0.01 s) lets the others queue, but by their
        # turn their deadlines (0.21 s) leave less than the (now 0.2 s) service time
        first = asyncio.create_task(one(0.2, 5.0))
        await asyncio.sleep(0)
        await asyncio.gather(one(0.2, 0.21), one(0.2, 0.21), one(0.2, 0.21))
        await first
        return log, ran

    log, ran = asyncio.run(go())
    assert log.count("ok") == 1 and ran == 1 and log.count("late") == 3
