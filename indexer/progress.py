"""A small progress bar on stderr: count, rate and ETA (no dependency; redrawn at most 10x/s)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from mediasearch.indexer.items import IndexReport


class ProgressBar:
    """``report`` after each commit; ``close`` draws the final line. Only redraws on a terminal,
    otherwise prints a line every ``log_every_s`` seconds (CI logs stay short)."""

    def __init__(
        self, label: str = "indexing", stream: TextIO | None = None, log_every_s: float = 5.0
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self._last = 0.0

    def __call__(self, report: IndexReport, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else self.log_every_s):
            return
        self._last = now
        self._draw(report, total, end="\r" if self.tty else "\n")

    def close(self, report: IndexReport, total: int | None) -> None:
        self._draw(report, total, end="\n")

    def _draw(self, report: IndexReport, total: int | None, end: str) -> None:
        self.stream.write(render(self.label, report, total) + end)
        self.stream.flush()


def render(label: str, report: IndexReport, total: int | None) -> str:
    """``indexing [#####.....] 120/2000 6% 45.2/s ETA 0:00:41 (3 failed, 10 skipped)``."""
    done, elapsed = report.processed + report.retried, report.elapsed_s
    rate = done / elapsed if elapsed > 0 else 0.0
    extra = f"({report.failed} failed, {report.skipped} skipped, {report.removed} removed)"
    if not total:
        return f"{label} {done} {rate:.1f}/s {extra}"
    frac = min(1.0, done / total)
    bar = "#" * int(frac * 20)
    eta = (
        _clock((total - done) / rate) if rate > 0 and done < total else ("0:00:00" if done >= total else "?")
    )
    return f"{label} [{bar:<20}] {done}/{total} {frac:4.0%} {rate:.1f}/s ETA {eta} {extra}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
