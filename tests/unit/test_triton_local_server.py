"""The local Triton launcher's pieces that need no running server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mediasearch.dev.triton import (
    LocalTriton,
    TritonOptions,
    _pick_ports,
    check_repository,
    failed_models,
    instance_count,
)
from mediasearch.dev.triton_install import link_python_backend, pytriton_root, server_environment
from mediasearch.errors import NotFound

TRITON_LOG = """\
I1128 01:10:16.4 model_lifecycle.cc:472] loading: clip_text:1
E1128 01:10:17.1 model_lifecycle.cc:654] failed to load 'clip_vision' version 1: Internal: onnxruntime \
failed: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF
E1128 01:10:17.2 model_repository_manager.cc:1xx] Invalid argument: ensemble 'x' failed to load 'clip_vision'
error: creating server: Internal - failed to load all models
"""


def test_failed_models_names_each_model_that_failed_to_load_once() -> None:
    assert failed_models(TRITON_LOG) == ["clip_vision"]
    assert failed_models("all good\n") == []


def test_start_raises_not_found_suggesting_export_when_the_repository_is_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="mediasearch export"):
        LocalTriton(TritonOptions(tmp_path / "nowhere")).start()


def test_start_raises_not_found_suggesting_export_when_the_manifest_is_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="mediasearch export"):
        check_repository(tmp_path, "clip", "cpu")


def test_picked_ports_are_distinct_and_keep_the_ones_given() -> None:
    http, grpc, metrics = _pick_ports("127.0.0.1", (0, 0, 0))
    assert len({http, grpc, metrics}) == 3
    assert _pick_ports("127.0.0.1", (1234, 0, 0))[0] == 1234


def test_backend_folder_links_this_pythons_stub_and_the_backend_library(tmp_path: Path) -> None:
    folder = link_python_backend(tmp_path) / "python"
    stub = folder / "triton_python_backend_stub"
    assert stub.is_symlink()
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in str(stub.resolve())
    assert (folder / "libtriton_python.so").resolve().parent == pytriton_root() / "backends" / "python"


def test_server_environment_puts_libpython_and_the_venv_first() -> None:
    import sysconfig

    env = server_environment(ort_threads=1)
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["MEDIASEARCH_TRITON_ORT_THREADS"] == "1"


def test_instance_count_reads_the_flavours_config_and_defaults_to_one(tmp_path: Path) -> None:
    configs = tmp_path / "clip_text" / "configs"
    configs.mkdir(parents=True)
    (configs / "cpu.pbtxt").write_text('name: "clip_text"\ninstance_group { count: 3 kind: KIND_CPU }\n')
    (tmp_path / "clip_text" / "config.pbtxt").write_text('name: "clip_text"\n')
    assert instance_count(tmp_path, "clip_text", "cpu") == 3
    assert instance_count(tmp_path, "clip_text", "gpu") == 1
