"""The local Triton launcher against the real tritonserver: readiness, clean stop, clear failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mediasearch.dev.processes import Child, free_port, mediasearch_command
from mediasearch.dev.triton import SHM_DIR, LocalTriton, TritonOptions
from mediasearch.errors import ModelError
from mediasearch.model_manifest import ModelManifest


def _port_is_free(port: int) -> bool:
    """Nobody listens there (connections in TIME_WAIT are fine, as for any server restart)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_triton_serves_both_models_with_the_manifest_version_when_started_over_the_repository(
    triton_server: LocalTriton, tiny_repository: Path
) -> None:
    manifest = ModelManifest.load(tiny_repository)
    for spec in (manifest.text, manifest.vision):
        with urllib.request.urlopen(f"{triton_server.http_url}/v2/models/{spec.model}/config") as resp:
            config = json.load(resp)
        assert config["backend"] == "python"  # the CPU flavour
        assert config["parameters"]["mediasearch_version"]["string_value"] == manifest.version
        assert config["max_batch_size"] == spec.max_batch_size


def test_triton_stop_leaves_no_process_port_or_shared_memory_behind(tiny_repository: Path) -> None:
    server = LocalTriton(TritonOptions(tiny_repository, ort_threads=1)).start()
    pid, ports, prefix = server.pid, (server.http_port, server.grpc_port), server._shm_prefix
    assert pid is not None and list(SHM_DIR.glob(f"{prefix}*"))
    server.stop()
    assert _gone(pid)
    assert all(_port_is_free(p) for p in ports)
    assert not list(SHM_DIR.glob(f"{prefix}*"))


def test_a_killed_triton_starts_again_on_the_same_ports(tiny_repository: Path) -> None:
    server = LocalTriton(TritonOptions(tiny_repository, ort_threads=1)).start()
    try:
        pid, ports = server.pid, (server.http_port, server.grpc_port, server.metrics_port)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.running():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.start()  # what the `make up` supervisor does
        assert server.running() and server.pid != pid
        assert (server.http_port, server.grpc_port, server.metrics_port) == ports
        with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.stop()


def test_triton_start_fails_naming_the_model_when_one_cannot_load(
    tiny_repository: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "repository"
    shutil.copytree(tiny_repository, broken)
    (broken / "clip_vision" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelError, match="clip_vision") as caught:
        LocalTriton(TritonOptions(broken, ort_threads=1)).start()
    assert "clip_text" not in str(caught.value).split("failed to load")[0]


def test_cli_triton_prints_its_addresses_and_stops_cleanly_on_sigterm(tiny_repository: Path) -> None:
    grpc_port = free_port()
    argv = mediasearch_command(
        "triton", "--repository", str(tiny_repository), "--grpc-port", str(grpc_port),
        "--http-port", "0", "--metrics-port", "0", "--ort-threads", "1",
    )  # fmt: skip
    child = Child("triton", argv).start()
    try:
        out = "".join(child.read_until("Ctrl-C stops it"))
        assert f"grpc     127.0.0.1:{grpc_port}" in out, out
        server_pid = int(out.split("(pid ")[1].split(")")[0])
        assert child.stop(timeout_s=30) == 0
    finally:
        child.stop()
    assert _gone(server_pid)
    assert _port_is_free(grpc_port)


SUPERVISOR = """
import sys, threading, time
from pathlib import Path
from mediasearch.dev.triton import LocalTriton, TritonOptions

servers = []
thread = threading.Thread(  # started from a thread that ends, as the dev cluster restarts it
    target=lambda: servers.append(LocalTriton(TritonOptions(Path(sys.argv[1]), ort_threads=1)).start())
)
thread.start()
thread.join()
s = servers[0]
print(s.pid, s.http_port, s.grpc_port, s._shm_prefix, flush=True)
time.sleep(120)
"""


def test_a_supervisor_killed_with_sigkill_leaves_no_triton_port_or_shared_memory(
    tiny_repository: Path,
) -> None:
    supervisor = Child("supervisor", [sys.executable, "-c", SUPERVISOR, str(tiny_repository)]).start()
    try:
        pid, http_port, grpc_port, prefix = next(supervisor.lines()).split()
        assert not _gone(int(pid)) and list(SHM_DIR.glob(f"{prefix}*"))
        supervisor.kill()
        deadline = time.monotonic() + 30
        while not (
            _gone(int(pid)) and _port_is_free(int(grpc_port)) and not list(SHM_DIR.glob(f"{prefix}*"))
        ):
            assert time.monotonic() < deadline, (
                "tritonserver, its port or its shared memory outlived the supervisor"
            )
            time.sleep(0.2)
        assert _port_is_free(int(http_port))
    finally:
        supervisor.stop()
