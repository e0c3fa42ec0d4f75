"""The development harness's child processes: readiness, logs, stopping, crash-test kills."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mediasearch.dev.processes import Child, free_ports, tcp_open
from mediasearch.errors import Unavailable

PY = sys.executable
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(helper.pid, flush=True)
time.sleep(60)
"""
SERVER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(30)
"""
STEPS = """
import time
for step in ("reserved", "staged", "committed"):
    print(f"stage={step}", flush=True)
    time.sleep(0.2)
"""


def test_a_child_ignoring_sigterm_is_killed_with_its_process_group_after_the_timeout() -> None:
    child = Child("stubborn", [PY, "-c", STUBBORN]).start()
    helper = int(next(child.lines()))
    assert child.stop(timeout_s=0.5) == -signal.SIGKILL
    assert not child.running()
    deadline = time.monotonic() + 10
    while _alive(helper):  # killed with the group; the kernel reaps it through init
        assert time.monotonic() < deadline, "the child's own child outlived it"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is dead


def test_waiting_for_a_child_that_exits_says_so_and_quotes_its_log(tmp_path: Path) -> None:
    argv = [PY, "-c", "print('no config here'); raise SystemExit(3)"]
    child = Child("failing", argv, log_path=tmp_path / "f.log")
    with pytest.raises(Unavailable, match=r"(?s)failing exited \(status 3\).*no config here"):
        child.start().wait_tcp(free_ports(1)[0], timeout_s=30)


def test_waiting_runs_out_of_time_naming_what_it_waited_for(tmp_path: Path) -> None:
    with Child("sleeper", [PY, "-c", "import time; time.sleep(30)"], log_path=tmp_path / "s.log") as child:
        port = free_ports(1)[0]
        with pytest.raises(Unavailable, match=f"not listening on 127.0.0.1:{port} after 0s"):
            child.wait_tcp(port, timeout_s=0.2)


def test_a_server_child_is_ready_once_it_listens_and_a_restart_appends_to_its_log(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    child = Child("server", [PY, "-c", SERVER, str(port)], log_path=tmp_path / "server.log")
    child.start().wait_tcp(port, timeout_s=30)
    child.stop()
    assert not tcp_open("127.0.0.1", port)
    child.start().wait_tcp(port, timeout_s=30)
    child.stop()
    assert child.restarts == 1 and (tmp_path / "server.log").read_text().count("listening") == 2


def test_kill_at_a_marker_kills_right_there_and_returns_what_was_read() -> None:
    child = Child("steps", [PY, "-c", STEPS]).start()
    assert [line.strip() for line in child.kill_at("stage=staged")] == ["stage=reserved", "stage=staged"]
    assert child.wait(timeout_s=10) == -signal.SIGKILL


def test_reading_up_to_a_marker_leaves_the_pipe_open_for_the_rest() -> None:
    script = "import time; print('ready', flush=True); time.sleep(0.3); print('more')"
    child = Child("talker", [PY, "-c", script]).start()
    assert child.read_until("ready") == ["ready\n"]
    assert child.wait(timeout_s=10) == 0  # it could still write: the pipe was not closed under it
    child.stop()


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20


SUPERVISOR = """
import sys, threading, time
from mediasearch.dev.processes import Child

started = []
def start():  # a short-lived thread starts (or restarts) the child, as the dev cluster's supervisor does
    started.append(Child("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]).start())
thread = threading.Thread(target=start)
thread.start()
thread.join()
time.sleep(0.5)
print(started[0].pid, started[0].running(), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone too
        return stat.read().split()[2] != "Z"


def test_a_child_outlives_the_thread_that_started_it_but_not_its_killed_supervisor() -> None:
    supervisor = Child("supervisor", [PY, "-c", SUPERVISOR]).start()
    try:
        pid_text, running = next(supervisor.lines()).split()
        pid = int(pid_text)
        assert running == "True", "the child died with the thread that started it"
        assert _alive(pid)
        supervisor.kill()  # SIGKILL: no chance to stop its children
        deadline = time.monotonic() + 5
        while _alive(pid):
            assert time.monotonic() < deadline, "the child outlived its killed supervisor"
            time.sleep(0.05)
    finally:
        supervisor.stop()
