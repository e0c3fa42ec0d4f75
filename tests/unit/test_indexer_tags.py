"""Tags of folder images: read from each image's JSON sidecar by ``mediasearch index`` (real ONNX
tiny CLIP, SQLite); the S3 metadata path is in tests/integration/test_indexer_tags.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mediasearch.export.micro.scenes import read_gallery, write_gallery
from mediasearch.indexer.folder import index_folder
from mediasearch.metadata.models import INDEXED, REMOVED
from mediasearch.settings import Settings
from tests.support.index import sessions_for
from tests.support.indexer import indexer_settings, rows, scene_bytes


@pytest.fixture
def settings(tmp_path: Path, tiny_repository: Path) -> Settings:
    return indexer_settings(tmp_path, tiny_repository)


def _live_tags(settings: Settings) -> dict[str, list[str]]:
    """``{key: tags}`` of the INDEXED rows."""
    return {r.key: list(r.tags) for r in rows(sessions_for(settings.database_url)) if r.status == INDEXED}


def test_folder_images_get_their_sidecar_tags_and_a_broken_sidecar_only_loses_its_tags(
    settings: Settings, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    for i, name in enumerate(("trip/beach.jpg", "trip/dune.png", "broken.jpg", "plain.jpg")):
        (photos / name).write_bytes(scene_bytes(i, fmt="png" if name.endswith(".png") else "jpeg"))
    (photos / "trip/beach.jpg.json").write_text(json.dumps({"tags": ["beach", " Sunset", "BEACH"]}))
    (photos / "trip/dune.json").write_text(json.dumps({"tags": "sand, dune"}))
    (photos / "broken.json").write_text('{"tags": ["unterminated"')

    report = index_folder(settings, photos)

    assert (report.indexed, report.failed) == (4, 0), report.failures  # sidecars are not images
    assert _live_tags(settings) == {
        "trip/beach.jpg": ["beach", "sunset"],
        "trip/dune.png": ["sand", "dune"],
        "broken.jpg": [],
        "plain.jpg": [],
    }


def test_editing_a_sidecar_reindexes_its_image_with_the_new_tags(settings: Settings, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"p{i}.jpg").write_bytes(scene_bytes(i))
    (photos / "p0.json").write_text(json.dumps({"tags": ["old"]}))
    assert index_folder(settings, photos).indexed == 3
    first = {r.key: r.id for r in rows(sessions_for(settings.database_url))}

    (photos / "p0.json").write_text(json.dumps({"tags": ["new", "old"]}))
    (photos / "p1.json").write_text(json.dumps({"tags": ["added"]}))
    again = index_folder(settings, photos)

    assert (again.indexed, again.skipped) == (2, 1)
    assert _live_tags(settings) == {"p0.jpg": ["new", "old"], "p1.jpg": ["added"], "p2.jpg": []}
    by_id = {r.id: r for r in rows(sessions_for(settings.database_url))}
    assert by_id[first["p0.jpg"]].status == REMOVED and by_id[first["p1.jpg"]].status == REMOVED


def test_the_demo_gallery_is_indexed_with_each_scenes_words_as_tags(
    settings: Settings, tmp_path: Path
) -> None:
    gallery = tmp_path / "gallery"
    write_gallery(gallery, 6, seed=7, size=48)
    assert index_folder(settings, gallery).indexed == 6
    expected = {item.image.name: item.label.tags() for item in read_gallery(gallery)}
    assert _live_tags(settings) == expected
    assert all(len(tags) == 4 for tags in expected.values())
