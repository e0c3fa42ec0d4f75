"""A local ``tritonserver`` child process over the model repository, on loopback ports.

Used by ``mediasearch triton`` (``make triton``), the integration tests and the benchmarks. It runs the
real Triton Inference Server (the binary from the ``nvidia-pytriton`` wheel by default), so the
encoders' Triton client is tested against the same server, dynamic batcher and gRPC API as
production; only the model's backend differs (the CPU flavour runs ONNX Runtime in ``model.py``).

Clean-up matters because tests start and stop it many times on shared machines: the server is a
:class:`~mediasearch.dev.processes.Child` of the development harness (its own session, SIGTERM,
then its process group killed, which takes the python backend's stubs with it), and the backend's
``/dev/shm`` regions carry a prefix unique to this server and are removed on the way out.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mediasearch.dev.processes import Child, free_ports
from mediasearch.dev.triton_install import resolve_install, server_environment
from mediasearch.errors import ModelError, NotFound, Unavailable
from mediasearch.model_manifest import ModelManifest, ServingSpec
from mediasearch.settings import Settings
from mediasearch.signals import StopSignals

log = logging.getLogger(__name__)

DEFAULTS = Settings.defaults()
SHM_DIR = Path("/dev/shm")
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class TritonOptions:
    """How to start the server. Port 0 picks a free loopback port."""

    repository: Path
    name: str = DEFAULTS.model_name
    flavour: str = DEFAULTS.triton_flavour
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    ort_threads: int = 0
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 20.0
    binary: Path | None = None
    backend_directory: Path | None = None
    log_file: Path | None = None  # kept after stop; by default the log lives (and dies) with the server
    tls_cert: Path | None = None  # gRPC over TLS (Triton's own --grpc-use-ssl); HTTP stays plaintext
    tls_key: Path | None = None


class LocalTriton:
    """Start, health-check and stop one ``tritonserver`` process. Use as a context manager."""

    def __init__(self, options: TritonOptions) -> None:
        self.options = options
        self.manifest: ModelManifest | None = None
        self._child: Child | None = None
        self._work_dir: Path | None = None
        self._shm_prefix = f"mediasearch-{uuid.uuid4().hex[:12]}-"
        self.http_port = self.grpc_port = self.metrics_port = 0

    # -- addresses -------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.options.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        if self.options.log_file is not None:
            return self.options.log_file
        return self._work_dir / "tritonserver.log" if self._work_dir else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log (empty if there is none)."""
        path = self.log_path
        text = path.read_text(errors="replace") if path is not None and path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalTriton:
        """Start the server and return once ``/v2/health/ready`` answers 200 (all models loaded).

        After the process died (a crash, a kill), starting again restarts it on the same ports, so
        clients that hold its address reconnect by themselves."""
        if self.running():
            return self
        if self._child is not None:  # it died: release what it left, keep its ports
            self.stop()
        self.manifest = check_repository(self.options.repository, self.options.name, self.options.flavour)
        self._work_dir = Path(tempfile.mkdtemp(prefix="mediasearch-triton-"))
        try:
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        log.info("tritonserver %d ready: grpc %s, http %s", self.pid, self.grpc_url, self.http_url)
        return self

    def stop(self) -> None:
        """SIGTERM, wait, then kill the process group; remove shared memory and the work folder."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(self.options.stop_timeout_s)
        for leftover in SHM_DIR.glob(f"{self._shm_prefix}*") if SHM_DIR.is_dir() else ():
            with contextlib.suppress(OSError):
                leftover.unlink()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        atexit.unregister(self.stop)

    def running(self) -> bool:
        return self._child is not None and self._child.running()

    def send_signal(self, sig: int) -> None:
        """Signal the server only (SIGTERM: Triton unloads its models, then exits; SIGKILL: a
        crash); a supervisor that sees it gone calls :meth:`start` again."""
        if self._child is not None and self._child.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._child.proc.send_signal(sig)

    def wait(self) -> int:
        """Block until the server exits on its own; returns its exit status."""
        return self._child.wait() if self._child is not None else 0

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------
    def _spawn(self) -> None:
        assert self._work_dir is not None
        o = self.options
        install = resolve_install(self._work_dir, o.binary, o.backend_directory)
        self.http_port, self.grpc_port, self.metrics_port = _pick_ports(
            o.host,
            (
                self.http_port or o.http_port,
                self.grpc_port or o.grpc_port,
                self.metrics_port or o.metrics_port,
            ),
        )
        args = [
            str(install.binary),
            f"--model-repository={Path(o.repository).resolve()}",
            f"--backend-directory={install.backend_directory}",
            f"--http-address={o.host}",
            f"--grpc-address={o.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        if o.tls_cert and o.tls_key:
            args += [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={Path(o.tls_cert).resolve()}",
                f"--grpc-server-key={Path(o.tls_key).resolve()}",
            ]
        if o.flavour != "gpu":  # the GPU flavour is the default config.pbtxt
            args.append(f"--model-config-name={o.flavour}")
        assert self.log_path is not None
        self.log_path.unlink(missing_ok=True)  # a restart's log starts afresh
        env = server_environment(self._ort_threads())
        # dies with this process whatever thread (re)starts it (processes.py's spawner thread)
        child = Child("tritonserver", args, env=env, log_path=self.log_path)
        self._child = child.start()

    def _ort_threads(self) -> int:
        """ONNX Runtime threads per CPU model instance: as given, else the cores shared by the
        instances of a model (the python backend runs instances as separate processes)."""
        if self.options.ort_threads > 0 or self.options.flavour != "cpu" or self.manifest is None:
            return self.options.ort_threads
        counts = [instance_count(self.options.repository, spec.model, "cpu") for spec in self._specs()]
        return max(1, (os.cpu_count() or 1) // max(counts))

    def _specs(self) -> tuple[ServingSpec, ...]:
        assert self.manifest is not None
        return (self.manifest.text, self.manifest.vision)

    def _wait_ready(self) -> None:
        assert self._child is not None
        timeout_s = self.options.startup_timeout_s
        try:
            self._child.wait_http(f"{self.http_url}/v2/health/ready", timeout_s, status=200)
        except Unavailable:
            if not self._child.running():
                raise self._startup_failure(
                    f"tritonserver exited with status {self._child.returncode}"
                ) from None
            raise self._startup_failure(f"tritonserver was not ready within {timeout_s:.0f}s") from None

    def _startup_failure(self, what: str) -> ModelError | Unavailable:
        path = self.log_path
        failed = failed_models(path.read_text(errors="replace") if path and path.exists() else "")
        tail = self.log_tail()
        where = f"over {self.options.repository} ({self.options.flavour} flavour)"
        if failed:
            return ModelError(
                f"{what}: model(s) {', '.join(failed)} failed to load {where}. Last lines of its log:\n{tail}"
            )
        return Unavailable(f"{what} {where}. Last lines of its log:\n{tail}")


def serve_triton(options: TritonOptions, on_ready: Callable[[LocalTriton], None] | None = None) -> None:
    """``mediasearch triton``: run a server until SIGTERM or SIGINT (then stop it in order: SIGINT
    counts too, as a shell may start background jobs ignoring it); ``on_ready(server)`` once it
    serves. Unavailable if the server exits by itself. A signal while it starts stops it once it
    has started; more signals while it stops are ignored (see :mod:`mediasearch.signals`)."""
    with StopSignals() as signals, LocalTriton(options) as server:
        if on_ready is not None and not signals.requested:
            on_ready(server)
        while server.running():
            if signals.wait(0.5):
                log.info("stopping tritonserver %s (%s)", server.pid, signals.name)
                return
        raise Unavailable(f"tritonserver exited by itself (status {server.wait()}):\n{server.log_tail()}")


def check_repository(repository: Path, name: str, flavour: str) -> ModelManifest:
    """The manifest, once the repository holds both models in ``flavour``; else a clear error."""
    hint = f"export a model first: `mediasearch export --model <hf-id|dir> --out {repository} --name {name}`"
    if not Path(repository).is_dir():
        raise NotFound(f"model repository {repository} does not exist; {hint}")
    manifest = ModelManifest.load(repository, name)
    config = "config.pbtxt" if flavour == "gpu" else f"configs/{flavour}.pbtxt"
    for spec in (manifest.text, manifest.vision):
        if not (Path(repository) / spec.model / config).is_file():
            raise NotFound(f"{repository}/{spec.model}/{config} is missing; {hint}")
    return manifest


def instance_count(repository: Path, model: str, flavour: str) -> int:
    """How many instances a model's config in ``flavour`` asks for (Triton's default is 1)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = Path(repository) / model / ("config.pbtxt" if flavour == "gpu" else f"configs/{flavour}.pbtxt")
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    return max(1, sum(group.count or 1 for group in config.instance_group))


def failed_models(log_text: str) -> list[str]:
    """Model names from Triton's ``failed to load 'NAME'`` log lines, in order, without repeats."""
    names: list[str] = []
    marker = "failed to load '"
    for line in log_text.splitlines():
        start = line.find(marker)
        if start >= 0:
            name = line[start + len(marker) :].split("'", 1)[0]
            if name and name not in names:
                names.append(name)
    return names


def _pick_ports(host: str, wanted: tuple[int, int, int]) -> tuple[int, int, int]:
    """The wanted ports, with each 0 replaced by a different free port on ``host``."""
    free = iter(free_ports(sum(1 for p in wanted if not p), host))
    http, grpc, metrics = (p or next(free) for p in wanted)
    return http, grpc, metrics
