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
