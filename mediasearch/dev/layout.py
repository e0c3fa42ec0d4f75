"""The repository's layout as installed: which folder each part of the one ``mediasearch`` namespace
comes from, and the layers those parts belong to.

The service folders stay at the top of the repository (``gateway/``, ``indexer/``, ``export/``) and
install as ``mediasearch.gateway``, ``mediasearch.indexer`` and ``mediasearch.export``
(``[tool.setuptools] package-dir`` in ``pyproject.toml``, the one place that says so). Dependencies
point one way::

    core (mediasearch, without the two below)  <-  services (gateway, indexer, export)
                                                <-  composition (mediasearch.cli, mediasearch.dev)

Read by the layering test and by :mod:`mediasearch.dev.typecheck`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("mediasearch.gateway", "mediasearch.indexer", "mediasearch.export")
COMPOSITION = ("mediasearch.cli", "mediasearch.dev")
CORE = "core"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """``{package: folder}`` from ``pyproject.toml``'s ``package-dir`` mapping."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def declared_packages(root: Path = ROOT) -> list[str]:
    """The explicit package list of ``pyproject.toml``."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return list(config["tool"]["setuptools"]["packages"])


def module_name(path: Path, root: Path = ROOT) -> str | None:
    """The installed name of a source file (``gateway/app.py`` -> ``mediasearch.gateway.app``)."""
    path = path.resolve()
    best: tuple[int, str] | None = None
    for package, folder in package_dirs(root).items():
        folder = folder.resolve()
        if path.is_relative_to(folder) and (best is None or len(folder.parts) > best[0]):
            rest = path.relative_to(folder).with_suffix("").parts
            if rest and rest[-1] == "__init__":
                rest = rest[:-1]
            best = (len(folder.parts), ".".join((package, *rest)))
    return best[1] if best else None


def layer_of(module: str) -> str | None:
    """``core``, a service, or a composition part; None for anything outside the namespace."""
    for part in (*SERVICES, *COMPOSITION):
        if module == part or module.startswith(part + "."):
            return part
    if module == "mediasearch" or module.startswith("mediasearch."):
        return CORE
    return None


def allowed(importer: str, imported: str) -> bool:
    """Whether a module of layer ``importer`` may import one of layer ``imported``."""
    if importer == imported or imported == CORE:
        return True
    # the CLI and dev tooling compose everything; the core imports no service, and services never
    # import each other
    return importer in COMPOSITION
