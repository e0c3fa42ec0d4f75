"""Child processes of the development harness: start, wait until ready, logs, stop.

One implementation for ``make up`` (the dev cluster), the local Triton launcher, the tests and the
benchmarks. A :class:`Child`

- runs in its own session: a terminal's Ctrl-C reaches only its supervisor, which stops the
  children in order;
- is told by the kernel to exit when its supervisor dies (``PR_SET_PDEATHSIG``), so a supervisor
  killed with SIGKILL leaves no child behind, Triton included (``die_with_parent=False`` opts out).
  The kernel ties that signal to the *thread* that forked, not the process, so every such child is
  forked by one spawner thread that lives as long as the process: a child restarted from a
  short-lived thread (the dev cluster's supervisor, a test) still dies with the process only.
  ``setpriv --pdeathsig`` (util-linux) sets the signal and execs the command, so no Python runs
  between fork and exec: a ``preexec_fn`` would run every at-fork hook of this process in the
  child, and one that allocates (filelock's, once the export has imported it) crashes there now
  and then in a process full of native threads; without ``setpriv`` it is a ``preexec_fn``;
- writes its stdout and stderr to a log file, or to a pipe its owner reads line by line
  (:meth:`Child.lines`: tests that act on what a child logs);
- is stopped with SIGTERM and, if it has not exited after a timeout, its whole process group is
  killed; the group is killed in any case afterwards, so helpers it started (Triton's python stubs)
  go with it.

Readiness is a condition polled until it holds, the child exits, or time runs out
(:meth:`Child.wait_until`, with the usual conditions as methods); failures raise
:class:`~mediasearch.errors.Unavailable` quoting the end of the child's log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mediasearch.errors import Unavailable

T = TypeVar("T")

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different ports on ``host`` that nothing listens on right now (the OS picks them;
    all sockets are held until every port is chosen, so no two are the same)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port on ``host`` that nothing listens on right now."""
    return free_ports(1, host)[0]


def mediasearch_command(*args: str, **options: object) -> list[str]:
    """The argv of ``mediasearch ARGS --option VALUE ...`` run by this interpreter (``port_file=p``
    becomes ``--port-file p``; True, a bare ``--flag``; None, left out)."""
    argv = [sys.executable, "-m", "mediasearch.cli", *args]
    for name, value in options.items():
        if value is None or value is False:
            continue
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


def tcp_open(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http_status(url: str) -> int | None:
    """The HTTP status ``url`` answers with; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def grpc_serving(address: str, service: str = "") -> bool:
    """Whether the gRPC server at ``address`` reports SERVING on its health service."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _die_with_parent() -> None:  # runs in the child between fork and exec (no setpriv)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_SETPRIV = shutil.which("setpriv")


class _Spawner:
    """The one thread that forks children which die with this process (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def run(self, make: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="child spawner", daemon=True)
                self._thread.start()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._requests.put((make, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            make, done = self._requests.get()
            try:
                done.set_result(make())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()


class Child:
    """One child process. ``env`` is added to this process's environment; without ``log_path`` the
    output goes to a pipe (:meth:`lines`)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env or {})
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.http_port = 0  # a gateway's HTTP port, once it serves (start_gateway)
        self.restarts = 0

    # -- state -----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log file (empty for a piped child or before it wrote anything)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Child:
        """Start (or, after it exited, restart) the process; the log file is appended to."""
        if self.running():
            return self
        if self.proc is not None:
            self.restarts += 1
            if self.proc.stdout is not None:
                self.proc.stdout.close()  # the last run's pipe
        with contextlib.ExitStack() as stack:
            out: Any = subprocess.PIPE
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(self.log_path.open("a"))

            argv, preexec = self.argv, None
            if self.die_with_parent and _SETPRIV:
                argv = [_SETPRIV, "--pdeathsig", "SIGTERM", "--", *self.argv]
            elif self.die_with_parent:
                preexec = _die_with_parent

            def popen() -> subprocess.Popen[str]:
                return subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, **self.env}, text=True, start_new_session=True, preexec_fn=preexec,
                )  # fmt: skip

            self.proc = _SPAWNER.run(popen) if self.die_with_parent else popen()
        self.started_at = time.monotonic()
        log.debug("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))
        return self

    def lines(self) -> Iterator[str]:
        """The child's output, line by line, as it comes (piped children only)."""
        if self.proc is None or self.proc.stdout is None:
            raise RuntimeError(f"{self.name} was not started with its output piped")
        stream = self.proc.stdout
        while line := stream.readline():  # not `yield from stream`: leaving early would close the pipe
            yield line

    def read_until(self, marker: str | None) -> list[str]:
        """The output lines (piped children only) up to the first that contains ``marker``; with
        None, or when the child exits first, up to the end."""
        seen = []
        for line in self.lines():
            seen.append(line)
            if marker is not None and marker in line:
                break
        return seen

    def kill_at(self, marker: str | None) -> list[str]:
        """:meth:`read_until` ``marker``, then SIGKILL the child (crash tests: kill -9 at a step)."""
        seen = self.read_until(marker)
        if marker is not None and seen and marker in seen[-1]:
            self.kill()
        return seen

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until the child exits; its exit status (negative: the signal that ended it)."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def interrupt(self) -> None:
        """SIGINT, what Ctrl-C in its terminal would send."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the child (only; :meth:`stop` clears its process group)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM; if it has not exited after ``timeout_s``, SIGKILL. Then kill what is left of
        its process group (it ran in its own session: the group is its helpers). Returns the exit
        status (None when it never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs of SIGTERM; killing it", self.name, timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        status = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        return status

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- readiness -------------------------------------------------------------------------------
    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``ready()`` until it holds; Unavailable if the child exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if not self.running():
                status = self.returncode
                raise Unavailable(f"{self.name} exited (status {status}) before {what}{self._tail()}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.name}: not {what} after {timeout_s:.0f}s{self._tail()}")
            time.sleep(0.05)

    def wait_tcp(self, port: int, host: str = "127.0.0.1", timeout_s: float = 120.0) -> None:
        self.wait_until(lambda: tcp_open(host, port), timeout_s, f"listening on {host}:{port}")

    def wait_serving(self, port: int, host: str = "127.0.0.1", timeout_s: float = 120.0) -> None:
        """Until the gRPC server on ``host:port`` reports SERVING (grpc.health.v1)."""
        address = f"{host}:{port}"
        self.wait_until(lambda: grpc_serving(address), timeout_s, f"SERVING on {address}")

    def wait_http(self, url: str, timeout_s: float = 120.0, *, status: int | None = None) -> None:
        """Until ``url`` answers (with ``status``, when given)."""

        def answers() -> bool:
            got = http_status(url)
            return got is not None and (status is None or got == status)

        self.wait_until(answers, timeout_s, f"answering {url}")

    def wait_port_file(self, path: Path, timeout_s: float = 120.0) -> list[int]:
        """The ports a child writes into ``path`` once it serves (``--port-file``)."""
        written = lambda: path.exists() and bool(path.read_text().strip())  # noqa: E731
        self.wait_until(written, timeout_s, f"writing {path}")
        return [int(p) for p in path.read_text().split()]

    def _tail(self) -> str:
        tail = self.log_tail()
        return f"; the end of {self.log_path}:\n{tail}" if tail else ""


def start_gateway(
    name: str, env: Mapping[str, str], folder: Path, timeout_s: float = 120.0
) -> tuple[Child, int, int]:
    """``mediasearch serve`` on free ports with ``env``; its log is ``folder/<name>.log``. Returns
    the child once it serves, its gRPC port and its metrics port (the caller stops the child); its
    HTTP port (API and page) is ``child.http_port``."""
    port_file = folder / f"{name}.port"
    port_file.unlink(missing_ok=True)
    argv = mediasearch_command("serve", port=0, metrics_port=0, http_port=0, port_file=port_file)
    child = Child(name, argv, env=env, log_path=folder / f"{name}.log").start()
    try:
        port, metrics_port, child.http_port = child.wait_port_file(port_file, timeout_s)
    except BaseException:
        child.stop()
        raise
    return child, port, metrics_port


def stop_all(children: Sequence[Child], timeout_s: float = 15.0) -> None:
    """Stop ``children`` in reverse order (the last started first)."""
    for child in reversed(children):
        child.stop(timeout_s)
