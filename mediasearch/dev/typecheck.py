"""``python -m mediasearch.dev.typecheck``: mypy over the whole namespace, services included.

The editable install maps ``mediasearch.gateway`` to ``gateway/`` through an import hook, which mypy
cannot follow: run plainly, mypy would see ``mediasearch/`` only and type every import of a service
as ``Any``. So this builds a link tree under ``build/typecheck/`` that has the installed shape
(``mediasearch/`` with ``gateway``, ``indexer`` and ``export`` linked in, from ``pyproject.toml``'s
``package-dir``), runs mypy on it, and reports errors under the real paths (``gateway/app.py``).
The link tree is rebuilt on every run, so new modules are always checked.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from mediasearch.dev.layout import ROOT, package_dirs

TREE = ROOT / "build" / "typecheck"


def link_tree(root: Path = ROOT, tree: Path = TREE) -> dict[Path, Path]:
    """Build the installed shape under ``tree``; returns ``{linked folder: real folder}``."""
    dirs = package_dirs(root)
    top = dirs.pop("mediasearch")
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "mediasearch"
    package.mkdir(parents=True)
    links: dict[Path, Path] = {}
    for entry in top.iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
            links[package / entry.name] = entry
    for name, folder in dirs.items():
        link = tree.joinpath(*name.split("."))
        link.symlink_to(folder)
        links[link] = folder
    return links


def real_paths(text: str, links: dict[Path, Path], root: Path = ROOT) -> str:
    """mypy's report with link-tree paths replaced by the repository's own."""
    for link, real in sorted(links.items(), key=lambda kv: -len(str(kv[0]))):
        for form in (str(link), os.path.relpath(link, root)):
            text = text.replace(form, os.path.relpath(real, root))
    return text


def main(argv: list[str] | None = None) -> int:
    from mypy import api

    links = link_tree()
    os.chdir(ROOT)
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *(argv or sys.argv[1:])])
    sys.stdout.write(real_paths(out, links))
    sys.stderr.write(real_paths(err, links))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
