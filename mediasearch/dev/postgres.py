"""PostgreSQL databases for the development harness: created, migrated, thrown away.

The development machines run one PostgreSQL server on 127.0.0.1:5432 (trust authentication;
``.ci/run`` starts it when it is down). ``make up`` creates and migrates its database there, tests
and benchmarks use throwaway databases (dropped with ``FORCE`` afterwards, even while a killed
child still holds a connection).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import make_url

from mediasearch.errors import Unavailable
from mediasearch.metadata.db import make_engine, migrated_engine, normalise_url, translated

if TYPE_CHECKING:
    from mediasearch.dev.processes import Child

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def available(admin_url: str = ADMIN_URL) -> bool:
    """Whether the server answers (a test tier that needs it is skipped otherwise)."""
    engine = make_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _on_server(url: str, what: str, statement: str) -> bool:
    """Run ``statement`` (``{name}``: the database ``url`` names) on the server's ``postgres``
    database, outside a transaction; whether it returned a row."""
    target = make_url(normalise_url(url))
    name = str(target.database)
    admin = make_engine(
        target.set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with translated(f"{what} database {name}"), admin.connect() as conn:
            result = conn.execute(text(statement.format(name=name)), {"name": name})
            return result.returns_rows and result.first() is not None
    finally:
        admin.dispose()


def database_exists(url: str) -> bool:
    return _on_server(url, "looking for", "SELECT 1 FROM pg_database WHERE datname = :name")


def create_database(url: str, *, replace: bool = False) -> None:
    """Create the database ``url`` names, unless it exists (``replace``: drop it first)."""
    if replace:
        drop_database(url)
    elif database_exists(url):
        return
    _on_server(url, "creating", 'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    """Drop it, disconnecting whoever is still connected."""
    _on_server(url, "dropping", 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_database(url: str) -> None:
    """Create the database if it is missing (PostgreSQL) and run the migrations (any backend)."""
    if url.startswith(("postgresql", "postgres")):
        create_database(url)
    with migrated_engine(url):
        pass


@contextlib.contextmanager
def throwaway_database(prefix: str = "mediasearch_test", admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``; yields its URL, drops it afterwards."""
    url = make_url(admin_url).set(database=f"{prefix}_{uuid.uuid4().hex[:10]}")
    rendered = url.render_as_string(hide_password=False)
    create_database(rendered)
    try:
        yield rendered
    finally:
        drop_database(rendered)


class LocalPostgres:
    """A PostgreSQL server of the harness's own: ``initdb`` in ``root``, ``postgres`` on its own
    loopback port as a :class:`~mediasearch.dev.processes.Child` (it dies with the harness).

    Fault tests and ``make chaos`` stop and start it (an outage of the metadata database) without
    touching the machine's shared server. PostgreSQL refuses to run as root: as root, the server
    runs as the ``postgres`` user (``setpriv``, keeping the die-with-parent signal). Durability is
    traded for speed (``fsync=off``): the data is a test's, thrown away with ``root``.
    """

    def __init__(
        self, root: Path | None = None, port: int | None = None, *, log_path: Path | None = None
    ) -> None:
        from mediasearch.dev.processes import free_port

        # the server's user must reach its folder: a fresh one under /tmp unless the caller has one
        self._owned = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mediasearch-pg-"))
        if self._owned:
            self.root.chmod(0o755)
        self.port = port or free_port()
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log_path = log_path or self.root / "postgres.log"
        self._child: Child | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--pdeathsig=SIGKILL",
            "--",
            *argv,
        ]

    def _binary(self, name: str) -> str:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        return str(found[-1]) if found else (shutil.which(name) or name)

    def init(self) -> LocalPostgres:
        """``initdb`` once (trust authentication on loopback, user ``postgres``)."""
        if (self.data / "PG_VERSION").exists():
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        argv = [self._binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise Unavailable(f"initdb failed in {self.data}: {done.stderr.strip()[-2000:]}")
        return self

    def start(self, timeout_s: float = 60.0) -> LocalPostgres:
        """Start the server (``init`` first if needed) and wait until it accepts connections."""
        from mediasearch.dev.processes import Child

        self.init()
        if self._child is None:
            argv = [
                self._binary("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sockets),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ]  # fmt: skip
            self._child = Child("postgres", self._as_owner(argv), log_path=self.log_path)
        self._child.start()
        self._child.wait_until(lambda: available(self.admin_url), timeout_s, "accepting connections")
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """A fast shutdown (SIGINT: open sessions are ended, nothing is lost)."""
        child = self._child
        if child is None or not child.running():
            return
        child.interrupt()
        try:
            child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            child.stop(5.0)

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash: it recovers from its WAL at the next start)."""
        if self._child is not None:
            self._child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(10.0)

    def running(self) -> bool:
        return self._child is not None and self._child.running()

    def pause(self) -> None:
        """SIGSTOP the postmaster and its backends (each in a process group of its own): a server
        that hangs, accepting connections and answering nothing (:meth:`resume` ends it)."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        pid = self._child.pid if self._child is not None else None
        if pid is None:
            return
        family = [pid]
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile, or not a pid
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    family.append(int(proc.name))
        for each in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, sig)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._child is not None:
            self._child.stop(5.0)
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
