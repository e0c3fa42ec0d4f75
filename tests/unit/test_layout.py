"""The layout: one installed namespace, and imports that point one way.

    core (mediasearch)  <-  services (gateway, indexer, export)  <-  composition (cli, dev tooling)

The arrows are checked on the source (every ``import``, at module level or inside a function), so a
wrong one fails here before it can ship.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from mediasearch.dev.layout import ROOT, allowed, declared_packages, layer_of, module_name, package_dirs
from mediasearch.dev.typecheck import link_tree, real_paths


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source`` (relative ones resolved)."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            # `from pkg import sub` may name a submodule: count the most specific name
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def wrong_arrows(source: str, module: str, is_package: bool = False) -> list[str]:
    importer = layer_of(module)
    assert importer is not None, module
    out = []
    for line, name in imports_of(source, module, is_package):
        imported = layer_of(name)
        if imported is not None and not allowed(importer, imported):
            out.append(f"{module}:{line} ({importer}) imports {name} ({imported})")
    return out


def source_files() -> list[Path]:
    return sorted({p for folder in package_dirs().values() for p in folder.rglob("*.py")})


def test_no_module_imports_against_the_layers() -> None:
    problems = []
    checked = 0
    for path in source_files():
        name = module_name(path)
        if name is None or name.startswith("mediasearch._proto.mediasearch"):
            continue  # generated stubs
        checked += 1
        problems += wrong_arrows(path.read_text(), name, path.name == "__init__.py")
    assert checked > 100
    assert not problems, "\n".join(problems)


def test_the_arrow_check_catches_a_core_module_importing_a_service() -> None:
    source = "def f():\n    from mediasearch.gateway.app import start_gateway\n"
    assert wrong_arrows(source, "mediasearch.settings") == [
        "mediasearch.settings:2 (core) imports mediasearch.gateway.app.start_gateway (mediasearch.gateway)"
    ]


def test_the_arrow_check_catches_one_service_importing_another_even_relatively() -> None:
    assert wrong_arrows("from mediasearch.indexer import fetch\n", "mediasearch.gateway.locator")
    assert wrong_arrows("from ..indexer import fetch\n", "mediasearch.gateway.locator")
    assert not wrong_arrows("from .filters import Filters\n", "mediasearch.gateway.locator")


def test_the_arrow_check_lets_the_composition_layer_use_everything() -> None:
    source = "import mediasearch.gateway.app\nfrom mediasearch.indexer.folder import index_folder\n"
    assert not wrong_arrows(source, "mediasearch.cli.demo")
    assert wrong_arrows("from mediasearch.dev.cluster import DevCluster\n", "mediasearch.indexer.worker")


def test_every_package_folder_is_in_the_explicit_package_list() -> None:
    declared = set(declared_packages())
    found = {module_name(p.parent / "__init__.py") for p in source_files() if p.name == "__init__.py"}
    missing = sorted(n for n in found if n is not None and n not in declared)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert {"mediasearch.gateway", "mediasearch.indexer", "mediasearch.export"} <= declared


def test_services_import_only_under_the_mediasearch_namespace_outside_the_repository(
    tmp_path: Path,
) -> None:
    script = (
        "import importlib, sys\n"
        "import mediasearch.gateway.app, mediasearch.indexer.runner, mediasearch.export.triton_config\n"
        "for bare in ('gateway', 'indexer', 'export'):\n"
        "    try:\n"
        "        importlib.import_module(bare)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    sys.exit(f'import {bare} worked')\n"
        "print(mediasearch.gateway.app.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert Path(done.stdout.strip()) == ROOT / "gateway" / "app.py"


def test_typecheck_tree_has_the_installed_shape_and_reports_real_paths(tmp_path: Path) -> None:
    links = link_tree(ROOT, tmp_path)
    assert (tmp_path / "mediasearch" / "gateway" / "app.py").resolve() == ROOT / "gateway" / "app.py"
    assert (tmp_path / "mediasearch" / "settings.py").resolve() == ROOT / "mediasearch" / "settings.py"
    line = f"{tmp_path}/mediasearch/indexer/runner.py:3: error: boom"
    assert real_paths(line, links) == "indexer/runner.py:3: error: boom"
