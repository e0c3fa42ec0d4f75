"""The image's lock files: current with pyproject.toml, every pin hashed; a changed dependency, a
missing pin or a pin outside its range is reported (offline: nothing is resolved here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediasearch.dev import lockfile
from mediasearch.dev.layout import ROOT


@pytest.mark.parametrize("lock", lockfile.LOCKS, ids=lambda lock: lock.name)
def test_the_committed_lock_files_are_current(lock: lockfile.Lock) -> None:
    assert lockfile.problems(lock) == []


def test_the_runtime_lock_has_no_torch_and_the_export_lock_has_the_cpu_build() -> None:
    runtime, export = (lockfile.pins(lock.path.read_text()) for lock in lockfile.LOCKS)
    assert "torch" not in runtime and "transformers" not in runtime
    assert str(export["torch"][0]) == "2.13.0+cpu"


def _with_dependency(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "pyproject.toml").read_text()
    assert old in text
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace(old, new, 1))
    return changed


def test_a_dependency_changed_in_pyproject_makes_the_lock_stale(tmp_path: Path) -> None:
    pyproject = _with_dependency(tmp_path, '"rich>=13",', '"rich>=13",\n    "httpx>=0.27",')
    found = lockfile.problems(lockfile.LOCKS[0], pyproject)
    assert any("stale" in p for p in found)
    assert any("httpx is not pinned" in p for p in found)


def test_a_range_the_pin_falls_outside_of_is_reported(tmp_path: Path) -> None:
    pyproject = _with_dependency(tmp_path, '"rich>=13",', '"rich<13",')
    assert any("does not satisfy 'rich<13'" in p for p in lockfile.problems(lockfile.LOCKS[0], pyproject))


def test_pins_reads_versions_and_counts_hashes() -> None:
    text = "# header\nfoo-bar==1.2 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via x\nbaz==3\n"
    assert {name: (str(v), n) for name, (v, n) in lockfile.pins(text).items()} == {
        "foo-bar": ("1.2", 2),
        "baz": ("3", 0),
    }
