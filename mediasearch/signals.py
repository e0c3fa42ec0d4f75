"""SIGTERM and SIGINT as a request to stop, for the commands whose main thread is not an event loop
(the shard server, the compactor, ``mediasearch triton``, ``mediasearch up``).

The handler only records the signal. It runs in the main thread between two bytecodes, wherever
that thread is: inside ``Event.wait`` holding the event's lock (``Event.set`` there deadlocks), in
the middle of the stop it would start, or in a handler already running. And a signal can come more
than once: a Kubernetes pod gets one SIGTERM, but a process that dies with its supervisor
(``PR_SET_PDEATHSIG``) gets one each time the kernel hands it to another thread of the dying
supervisor, so a SIGKILLed ``mediasearch up`` sends its shard servers several. A handler that
stopped the server itself ran again inside that stop and hung it (gRPC's ``stop`` re-entered).

So the main thread waits with :meth:`StopSignals.wait`, which polls the record every
``poll_s`` (a sleep the signal cuts short is resumed, PEP 475), then stops the server once; any
further signal is ignored. Event loops use ``loop.add_signal_handler`` instead, which is safe.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

_DEFAULT = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Install with ``with StopSignals() as signals:`` (main thread only). The previous handlers
    come back when the block ends, unless a signal came: then more are ignored (SIG_IGN) to the exit.
    Not entered (code that may run off the main thread), it records nothing and :meth:`wait`
    waits on ``also`` alone."""

    def __init__(self, signals: tuple[signal.Signals, ...] = _DEFAULT, *, poll_s: float = 0.1) -> None:
        self.signals = signals
        self.poll_s = poll_s
        self.received: signal.Signals | None = None  # the first one
        self._previous: dict[signal.Signals, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:  # no lock, no logging, no I/O
        if self.received is None:
            self.received = signal.Signals(signum)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        """The signal received, for a log line ("SIGTERM"), or "" before one came."""
        return self.received.name if self.received is not None else ""

    def wait(self, timeout: float | None = None, *, also: threading.Event | None = None) -> bool:
        """Until a signal came (True), ``also`` was set (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (self.requested or (also is not None and also.is_set())):
            left = self.poll_s if deadline is None else min(self.poll_s, deadline - time.monotonic())
            if left <= 0:
                return False
            if also is None:
                time.sleep(left)
            else:
                also.wait(left)  # the handler takes no lock, so waiting on an event is safe
        return True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        self._previous = {sig: signal.signal(sig, self._record) for sig in self.signals}
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            # once asked, the process is on its way out: one more signal must not turn a clean exit
            # into death by SIGTERM. Ignored, not left to this handler, which the interpreter's
            # shutdown resets to the default (it leaves SIG_IGN alone).
            signal.signal(sig, handler if self.received is None else signal.SIG_IGN)
        self._previous = {}
