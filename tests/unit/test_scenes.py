"""The scene world: deterministic rendering, exact captions, query parsing, gallery files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mediasearch.cli import main
from mediasearch.export.micro.scenes import (
    COLOURS,
    HELD_OUT_COMBOS,
    SceneLabel,
    SceneQuery,
    caption,
    caption_attributes,
    describe,
    label_matches,
    parse_query,
    read_gallery,
    render_scene,
    sample_label,
    write_gallery,
)
from mediasearch.export.micro.scenes.vocab import backgrounds_for
from mediasearch.objects import sidecar_tags


def _pixels(seed: int) -> tuple[np.ndarray, SceneLabel]:
    img, label = render_scene(np.random.default_rng(seed), 64)
    return np.asarray(img), label


def test_render_scene_is_identical_for_the_same_seed_and_differs_for_another() -> None:
    first, label = _pixels(7)
    again, label_again = _pixels(7)
    other, _ = _pixels(8)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert label == label_again and np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_captions_name_only_attributes_their_label_has_for_many_seeds() -> None:
    for seed in range(300):
        rng = np.random.default_rng(seed)
        label = sample_label(rng)
        attrs = caption_attributes(label, rng)
        assert parse_query(describe(attrs, rng)) == attrs
        assert label_matches(label, parse_query(caption(label, rng)))


def test_describe_then_parse_query_round_trips_every_attribute() -> None:
    query = SceneQuery(
        colour="orange", shape="star", count=1, size="large", background="gray", position="left"
    )
    assert describe(query) == "a large orange star on the left on a gray background"
    assert parse_query(describe(query)) == query


def test_parse_query_tells_background_colour_from_shape_colour() -> None:
    query = parse_query("A white circle on a black background.")
    assert query == SceneQuery(colour="white", shape="circle", count=1, background="black")


def test_parse_query_reads_counts_from_numbers_and_singular_nouns_only() -> None:
    assert parse_query("two small blue squares").named() == {
        "colour": "blue",
        "shape": "square",
        "count": 2,
        "size": "small",
    }
    assert parse_query("a photo of red circles").count is None
    assert parse_query("show me a cat").named() == {}


def test_label_matches_requires_every_named_attribute() -> None:
    label = SceneLabel(colour="red", shape="circle", count=2, size="small", background="white", position=None)
    assert label_matches(label, SceneQuery())
    assert label_matches(label, parse_query("two small red circles on a white background"))
    assert not label_matches(label, parse_query("a red circle"))
    assert not label_matches(label, parse_query("two red circles on the left"))
    assert not label_matches(label, parse_query("two large red circles"))


def test_sampled_labels_avoid_held_out_combos_and_low_contrast_backgrounds() -> None:
    rng = np.random.default_rng(0)
    labels = [sample_label(rng, HELD_OUT_COMBOS) for _ in range(2000)]
    assert not {(lab.colour, lab.shape) for lab in labels} & set(HELD_OUT_COMBOS)
    assert all(lab.background in backgrounds_for(lab.colour) for lab in labels)
    assert all(colour not in backgrounds_for(colour) for colour in COLOURS)


def test_scene_label_refuses_a_group_with_a_position() -> None:
    with pytest.raises(ValueError, match="position"):
        SceneLabel(colour="red", shape="star", count=3, size="small", background="white", position="left")


def test_write_gallery_writes_an_image_and_a_sidecar_per_scene(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    paths = write_gallery(tmp_path / "a", 3, seed=5, size=48, progress=lambda d, t: calls.append((d, t)))
    assert [p.suffix for p in paths] == [".jpg"] * 3 and calls == [(1, 3), (2, 3), (3, 3)]
    sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    assert sidecar["image"] == paths[0].name and (sidecar["seed"], sidecar["index"]) == (5, 0)
    items = read_gallery(tmp_path / "a")
    assert [item.image for item in items] == paths
    assert all(label_matches(item.label, parse_query(item.caption)) for item in items)
    prefix = write_gallery(tmp_path / "b", 2, seed=5, size=48)
    assert [p.read_bytes() for p in prefix] == [p.read_bytes() for p in paths[:2]]


def test_gallery_sidecars_tag_each_scene_with_its_words_where_the_indexer_reads_them(tmp_path: Path) -> None:
    paths = write_gallery(tmp_path, 8, seed=3, size=32)
    for path, item in zip(paths, read_gallery(tmp_path), strict=True):
        label = item.label
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["tags"] == [label.colour, label.shape, label.size, label.background]
        assert sidecar_tags(path) == tuple(sidecar["tags"])  # the folder indexer's convention
    assert SceneLabel("red", "circle", 1, "large", "beige", "left").tags() == [
        "red",
        "circle",
        "large",
        "beige",
    ]


def test_scenes_command_writes_png_gallery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["scenes", "--out", str(tmp_path), "--count", "2", "--seed", "1", "--size", "32"]
    assert main([*argv, "--format", "png", "--exclude-held-out"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scene-1-000000.json",
        "scene-1-000000.png",
        "scene-1-000001.json",
        "scene-1-000001.png",
    ]
    assert "wrote 2 scenes" in capsys.readouterr().out
