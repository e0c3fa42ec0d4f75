"""Stage an export beside the model repository, then publish it with renames.

Everything is written into a staging folder on the same filesystem; only complete model folders are
renamed into the repository, and the manifest (the commit point that services read) is renamed in
last. A failure at any point before that leaves the repository as it was, and the staging folder is
removed. Old folders are moved aside, not deleted, until the new ones are in place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging(repository: Path) -> Iterator[Path]:
    """A temporary folder beside ``repository`` (same filesystem, so renames are atomic)."""
    repository.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=repository.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, repository: Path, entries: list[str], *, remove: Sequence[str] = ()) -> None:
    """Move ``entries`` (relative names in ``stage``) into ``repository``, in order, then move the
    folders named in ``remove`` out of it (models an earlier export had and this one has not).

    Put the manifest last: until it is renamed in, readers keep seeing the previous manifest.
    """
    repository.mkdir(parents=True, exist_ok=True)
    trash = stage / ".replaced"
    trash.mkdir(exist_ok=True)
    for name in entries:
        src, dst = stage / name, repository / name
        _fsync_tree(src)
        if dst.is_dir():  # a folder cannot be renamed over a non-empty one: move the old one aside
            os.replace(dst, trash / name)
        os.replace(src, dst)  # a file is replaced atomically
    for name in remove:
        if (repository / name).is_dir():
            os.replace(repository / name, trash / name)
    _fsync_dir(repository)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(path: Path) -> None:
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        with p.open("rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
