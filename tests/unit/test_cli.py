"""Every ``mediasearch`` subcommand answers --help, and errors reach the user as one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mediasearch.cli import _COMMANDS, main


def test_top_level_help_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "mediasearch.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in _COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", _COMMANDS)
def test_subcommand_help_exits_zero_with_description(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    assert f"mediasearch {name}" in capsys.readouterr().out


def test_project_error_is_one_line_on_stderr_with_exit_code_2(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", "--model", "/nonexistent/checkpoint", "--out", "/nonexistent/out"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: /nonexistent/checkpoint is not a directory") and "Traceback" not in err


def test_migrate_brings_a_new_database_to_the_current_revision_and_can_run_again(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["migrate", "--database-url", url]) == 0
    first = capsys.readouterr().out
    assert main(["migrate", "--database-url", url]) == 0
    assert first == capsys.readouterr().out and first.startswith("metadata database at revision 0")


def test_export_without_the_export_extra_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert main(["export", "--model", "/any/checkpoint"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: mediasearch export needs torch (the export extra)") and "image-export" in err
    )
