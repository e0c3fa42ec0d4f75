"""Where the ``tritonserver`` binary lives and what it needs to run outside NVIDIA's container.

The ``nvidia-pytriton`` wheel ships a ``tritonserver`` with only the python backend. Three facts make
it run from a virtual environment (each one, missing, makes every model fail to load):

- the backend directory must hold ``python/`` with the backend library and a
  ``triton_python_backend_stub`` built for *this* Python; the wheel keeps one stub per Python version,
  so we build a directory of symlinks instead of copying or editing the installed wheel;
- the stub links against ``libpython``: ``LD_LIBRARY_PATH`` must include the running Python's
  ``LIBDIR``;
- the stub runs ``model.py`` with the first ``python3`` on ``PATH``'s site-packages, so the venv's
  ``bin`` must come first on ``PATH`` (``PYTHONPATH`` alone does not make onnxruntime importable).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from mediasearch.errors import ConfigError

_INSTALL_HINT = "install the triton extra (`pip install -e '.[triton]'`) or pass --tritonserver"


@dataclass(frozen=True)
class TritonInstall:
    """The binary and the backend directory to start it with."""

    binary: Path
    backend_directory: Path


def pytriton_root() -> Path:
    """The ``tritonserver`` folder inside the installed ``nvidia-pytriton`` wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"nvidia-pytriton is not installed; {_INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ConfigError(f"no tritonserver binary under {root}; {_INSTALL_HINT}")
    return root


def link_python_backend(target: Path, root: Path | None = None) -> Path:
    """Fill ``target/python/`` with symlinks to the wheel's python backend and this Python's stub.

    Returns ``target``, ready for ``--backend-directory``.
    """
    root = root or pytriton_root()
    backend = root / "backends" / "python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ConfigError(f"nvidia-pytriton ships no python backend stub for Python {version} ({stub})")
    folder = target / "python"
    folder.mkdir(parents=True, exist_ok=True)
    for item in backend.iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    (folder / stub.name).symlink_to(stub)
    return target


def resolve_install(work_dir: Path, binary: Path | None, backend_directory: Path | None) -> TritonInstall:
    """The given binary/backends (a real Triton install), or the wheel's, with a linked backend folder."""
    if binary is not None:
        if not binary.is_file():
            raise ConfigError(f"tritonserver binary {binary} does not exist")
        return TritonInstall(binary, backend_directory or binary.parent.parent / "backends")
    root = pytriton_root()
    backends = backend_directory or link_python_backend(work_dir / "backends", root)
    return TritonInstall(root / "bin" / "tritonserver", backends)


def server_environment(ort_threads: int) -> dict[str, str]:
    """The environment the python backend stub needs (see the module docstring)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    if ort_threads > 0:
        env["MEDIASEARCH_TRITON_ORT_THREADS"] = str(ort_threads)
    return env
