"""``mediasearch demo`` (what ``make demo`` runs) end to end: export, gallery, indexing, the embedded
gRPC gateway, example queries through the client, contact sheets, clean stop."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mediasearch.cli import main
from mediasearch.cli.demo import QUERIES


def test_demo_indexes_a_gallery_serves_it_and_prints_ranked_results_for_every_example(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(tmp_path / "repo")
    argv = [
        "demo",
        "--model",
        str(tiny_checkpoint),
        "--repository",
        repo,
        "--out",
        str(tmp_path),
        "--count",
        "24",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "repo" / "clip.manifest.json").is_file()
    assert len(list((tmp_path / "gallery").glob("*.jpg"))) == 24
    assert "indexed 24, failed 0" in out
    port = int(out.split("listening on 127.0.0.1:")[1].split()[0])
    page = out.split("(gRPC) and ")[1].split()[0]  # the search page and the HTTP/JSON API
    assert page.startswith("http://127.0.0.1:") and page.endswith("/")
    for text in QUERIES:
        assert f"“{text}”" in out
    assert len(list((tmp_path / "sheets").glob("*.png"))) == len(QUERIES)
    assert f"/{len(QUERIES) * 5} results show what their query asks for" in out
    assert "gateway stopped" in out
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # nothing listens any more


def test_demo_without_model_flag_falls_back_to_tiny_random_clip_when_micro_model_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mediasearch.export.micro as micro

    monkeypatch.setattr(micro, "MODEL_DIR", tmp_path / "no-micro-model")
    argv = [
        "demo",
        "--repository",
        str(tmp_path / "repo"),
        "--out",
        str(tmp_path),
        "--count",
        "6",
        "--top-k",
        "2",
    ]
    assert main(argv) == 0
    assert "using a seeded tiny random CLIP" in capsys.readouterr().out
    assert (tmp_path / "tiny-random-clip" / "config.json").is_file()
