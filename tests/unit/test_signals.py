"""StopSignals: a signal only asks to stop, any number of times, and a stopping process is not
killed by the next one."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from mediasearch.signals import StopSignals


@pytest.fixture
def handlers() -> Iterator[None]:
    """This process's SIGTERM and SIGINT handlers, put back after the test (pytest's SIGINT one)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_first_signal_ends_the_wait_and_repeats_change_nothing(handlers: None) -> None:
    with StopSignals() as signals:
        assert not signals.requested and signals.name == ""
        threading.Timer(0.2, lambda: [os.kill(os.getpid(), signal.SIGTERM) for _ in range(20)]).start()
        started = time.monotonic()
        assert signals.wait(10)
        assert time.monotonic() - started < 2
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt, nothing recorded over the first
        time.sleep(0.05)
        assert signals.received is signal.SIGTERM and signals.name == "SIGTERM"
    # stopping: one more is ignored rather than killing the process mid-exit
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)


def test_without_a_signal_the_wait_times_out_and_the_previous_handlers_come_back(handlers: None) -> None:
    previous = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        assert signal.getsignal(signal.SIGINT) is not previous
        started = time.monotonic()
        assert not signals.wait(0.3)
        assert 0.25 < time.monotonic() - started < 2
        assert not signals.wait(0)
    assert signal.getsignal(signal.SIGINT) is previous


def test_an_event_set_elsewhere_ends_the_wait_too(handlers: None) -> None:
    stop = threading.Event()
    with StopSignals() as signals:
        assert not signals.wait(0, also=stop)
        threading.Timer(0.1, stop.set).start()
        assert signals.wait(10, also=stop)
        assert not signals.requested


def test_a_signal_ends_a_wait_on_an_event_without_touching_the_event(handlers: None) -> None:
    stop = threading.Event()
    with StopSignals() as signals:
        threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        assert signals.wait(10, also=stop)
        assert signals.requested and not stop.is_set()


def test_only_the_main_thread_installs_handlers() -> None:
    failures: list[BaseException] = []

    def install() -> None:
        try:
            with StopSignals():
                pass
        except RuntimeError as exc:
            failures.append(exc)

    worker = threading.Thread(target=install)
    worker.start()
    worker.join()
    assert len(failures) == 1 and "main thread" in str(failures[0])
