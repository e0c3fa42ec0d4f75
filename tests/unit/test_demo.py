"""``mediasearch demo`` (what ``make demo`` runs) end to end on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediasearch.cli import main
from mediasearch.cli.demo import SCENES


def test_demo_exports_draws_gallery_and_prints_similarity_table(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(tmp_path / "repo")
    code = main(["demo", "--model", str(tiny_checkpoint), "--repository", repo, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "repo" / "clip.manifest.json").is_file()
    assert len(list((tmp_path / "gallery").glob("demo-*.png"))) == len(SCENES)
    for sentence, _ in SCENES:
        assert sentence.split()[-1] in out  # every sentence has its row
    assert f"/{len(SCENES)} sentences picked their own picture" in out


def test_demo_without_model_flag_falls_back_to_tiny_random_clip_when_micro_model_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mediasearch.cli.demo as demo

    monkeypatch.setattr(demo, "DEFAULT_MODEL", tmp_path / "no-micro-model")
    assert main(["demo", "--repository", str(tmp_path / "repo"), "--out", str(tmp_path)]) == 0
    assert "using a seeded tiny random CLIP" in capsys.readouterr().out
    assert (tmp_path / "tiny-random-clip" / "config.json").is_file()
