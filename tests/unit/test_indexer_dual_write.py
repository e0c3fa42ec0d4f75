"""ShadowEncoder's view of the generation being built: a batch that asks while a check is under way
(starting the new model's encoder takes seconds) waits for that check, so no batch goes without
dual write because another one asked first (CI lost a batch of 8 images to exactly that)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from mediasearch.encoders.base import Encoder
from mediasearch.indexer.dual_write import Shadow, ShadowEncoder
from mediasearch.settings import Settings


class _SlowCheck(ShadowEncoder):
    """The check's database read and encoder start, as a delay; then generation 7 is found."""

    def __init__(self, delay_s: float, interval_s: float = 5.0) -> None:
        super().__init__(Settings.defaults(), cast(Any, None), cast(Encoder, None), interval_s=interval_s)
        self.delay_s, self.checks = delay_s, 0

    async def _refresh(self) -> None:
        self.checks += 1
        await asyncio.sleep(self.delay_s)
        self._shadow = Shadow(7, cast(Encoder, object()))


def test_batches_asking_during_the_first_check_all_get_its_answer() -> None:
    async def run() -> list[Shadow | None]:
        shadow = _SlowCheck(delay_s=0.2)
        answers = await asyncio.gather(*(shadow.current() for _ in range(4)))
        assert shadow.checks == 1
        return list(answers)

    assert [a.number if a else None for a in asyncio.run(run())] == [7, 7, 7, 7]


def test_the_answer_is_kept_for_the_interval_after_the_check_ends_then_checked_again() -> None:
    async def run() -> int:
        shadow = _SlowCheck(delay_s=0.05, interval_s=0.3)
        await shadow.current()
        await shadow.current()  # within the interval: no second check
        assert shadow.checks == 1
        await asyncio.sleep(0.35)
        await shadow.current()
        return shadow.checks

    assert asyncio.run(run()) == 2
