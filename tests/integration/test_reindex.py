"""``mediasearch reindex``: a folder indexed with the micro CLIP, reindexed with another model (a
tiny random CLIP, 16-wide) into a building generation: in parts, after a SIGKILL, with the
completeness check; staged segments are never served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mediasearch.cli import main
from mediasearch.errors import Conflict
from mediasearch.export.micro.scenes import write_gallery
from mediasearch.gateway.app import embedded_settings
from mediasearch.indexer.folder import index_folder
from mediasearch.indexer.reindex import Part, areindex, building_generation
from mediasearch.metadata.db import make_engine, session_factory
from mediasearch.metadata.models import SegmentRow
from mediasearch.metadata.segment_manifest import list_generations, load_shard_manifest
from mediasearch.settings import Settings
from mediasearch.vector_index.upgrade import STAGED

SCENES = 60


@pytest.fixture
def indexed(tmp_path: Path, micro_repository: Path) -> tuple[Settings, dict[str, str]]:
    """The gallery indexed with the micro CLIP (embedded: SQLite, a segment folder)."""
    gallery = tmp_path / "gallery"
    write_gallery(gallery, SCENES, 5)
    state = tmp_path / "state"
    settings = Settings.defaults().with_overrides(
        **embedded_settings(state), images_root=gallery, model_repository=micro_repository
    )
    assert index_folder(settings, gallery).indexed == SCENES
    env = {
        "MEDIASEARCH_DATABASE_URL": settings.database_url,
        "MEDIASEARCH_SEGMENT_STORE_URL": settings.segment_store_url,
        "MEDIASEARCH_SEGMENT_CACHE_DIR": str(settings.segment_cache_dir),
        "MEDIASEARCH_ENCODER": "local",
        "MEDIASEARCH_IMAGES_ROOT": str(gallery),
    }
    return settings, env


def _staged(settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).where(SegmentRow.state == STAGED)) or 0)
    finally:
        engine.dispose()


def test_a_reindex_in_two_parts_stages_every_image_once_and_serves_none_of_it(
    indexed: tuple[Settings, dict[str, str]], tiny_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _env = indexed
    new = settings.with_overrides(model_repository=tiny_repository)
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    with sessions() as session:
        before = [load_shard_manifest(session, s).segments for s in range(settings.num_shards)]
    first = asyncio_run(areindex(new, Part(0, 2)))
    assert first.report.indexed == SCENES // 2 and not first.completeness.complete
    assert len(first.completeness.missing) == SCENES // 2
    second = asyncio_run(areindex(new, Part(1, 2)))
    done = second.completeness
    assert (done.indexed, done.held, done.missing, done.doubled) == (SCENES, SCENES, [], [])
    assert second.generation == first.generation and second.dim == 16
    with sessions() as session:  # the shards' view is what it was: staged segments are not served
        assert [load_shard_manifest(session, s).segments for s in range(settings.num_shards)] == before
        (generation,) = list_generations(session)
    assert (generation.state, generation.dim, generation.model_version) == (
        "building",
        16,
        second.model_version,
    )
    # a second run of a part has nothing left to do, and stages nothing twice
    again = asyncio_run(areindex(new, Part(0, 2)))
    assert again.report.indexed == 0 and again.completeness.complete
    # another model cannot start a reindex while this one builds; abandoned, it can
    with sessions.begin() as session, pytest.raises(Conflict, match="being built for model"):
        building_generation(session, "clip-another", 16)
    url = settings.database_url
    assert main(["generation", "abandon", str(second.generation), "--database-url", url]) == 0
    assert f"generation {second.generation} abandoned: its {SCENES} staged vectors" in capsys.readouterr().out
    with sessions.begin() as session:
        assert building_generation(session, "clip-another", 16) == second.generation + 1
        assert _staged(settings) == 0
    engine.dispose()


def test_a_killed_reindex_resumes_where_it_stopped(
    indexed: tuple[Settings, dict[str, str]], tiny_repository: Path, tmp_path: Path
) -> None:
    settings, env = indexed
    argv = [sys.executable, "-m", "mediasearch.cli", "reindex", "--model-repository", str(tiny_repository),
            "--batch-size", "1", "--no-progress"]  # fmt: skip
    child = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while _staged(settings) < 1:  # a batch is in (of 60 batches of one): kill it mid-way
        assert child.poll() is None and time.monotonic() < deadline, "the reindex ended before it was killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    partial = _staged(settings)
    errors = tmp_path / "errors.jsonl"
    run = subprocess.run(
        [*argv, "--errors", str(errors)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "is complete: every indexed image has exactly one vector" in run.stdout
    assert f"{SCENES} of {SCENES} indexed images" in run.stdout
    assert _staged(settings) > partial and errors.read_text() == ""


def test_an_image_whose_original_is_gone_is_reported_and_the_generation_is_not_complete(
    indexed: tuple[Settings, dict[str, str]], tiny_repository: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _settings, env = indexed
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    gone = sorted((Path(env["MEDIASEARCH_IMAGES_ROOT"])).glob("*.jpg"))[0]
    gone.unlink()
    errors = tmp_path / "errors.jsonl"
    code = main(
        ["reindex", "--model-repository", str(tiny_repository), "--errors", str(errors), "--no-progress"]
    )
    out = capsys.readouterr().out
    assert code == 0 and f"{SCENES - 1} of {SCENES} indexed images" in out and "missing (1): ids" in out
    assert "is complete" not in out
    (problem,) = [json.loads(line) for line in errors.read_text().splitlines()]
    assert problem["image"].endswith(gone.name) and problem["error"] == "the original is gone"


def asyncio_run(coro):  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.run(coro)


def test_a_gateway_follows_the_switch_to_the_new_model_and_the_rollback_to_the_old(
    tmp_path: Path, micro_repository: Path, tiny_checkpoint: Path
) -> None:
    """Both models in one repository (clip: the micro CLIP; clip2: a tiny random one, 16-wide);
    an embedded gateway serving the first; reindex, switch, rollback: the gateway encodes with the
    live generation's model each time, every image is found exactly once, and a page token of the
    other model is refused."""
    import shutil

    from mediasearch.client import SearchClient
    from mediasearch.errors import InvalidInput
    from mediasearch.export import export_model
    from mediasearch.gateway.app import BackgroundGateway
    from mediasearch.vector_index.store import store_from_settings
    from mediasearch.vector_index.upgrade import rollback, switch_to

    repo = tmp_path / "repo"
    shutil.copytree(micro_repository, repo)
    export_model(str(tiny_checkpoint), repo, "clip2")
    gallery = tmp_path / "gallery"
    write_gallery(gallery, SCENES, 9)
    settings = Settings.defaults().with_overrides(
        **embedded_settings(tmp_path / "state"), images_root=gallery, model_repository=repo,
        shard_poll_interval_s=0.2, gateway_metrics_port=0,
    )  # fmt: skip
    assert index_folder(settings, gallery).indexed == SCENES
    server = BackgroundGateway(settings, 0, http_port=-1)
    server.start()
    client = SearchClient(server.address, timeout_s=10)
    try:
        micro = client.stats().model_version
        everything = client.search_text("two red circles", top_k=SCENES)
        assert sorted(r.id for r in everything.results) == list(range(1, SCENES + 1))
        token = client.search_text("two red circles", top_k=5).next_page_token

        reindexed = asyncio_run(areindex(settings.with_overrides(model_name="clip2")))
        assert reindexed.completeness.complete and reindexed.dim == 16
        deadline = time.monotonic() + 10
        while client.stats().reindex_vectors != SCENES:  # Stats shows the reindex in progress
            assert time.monotonic() < deadline, client.stats()
            time.sleep(0.1)
        assert client.stats().reindex_generation == reindexed.generation
        assert client.stats().reindex_model_version == reindexed.model_version
        engine = make_engine(settings.database_url)
        sessions = session_factory(engine)
        store = store_from_settings(settings, "test")
        searching, failures, models = threading.Event(), [], []

        def search_all_along() -> None:  # another caller, searching through the switch and back
            other = SearchClient(server.address, timeout_s=10)
            while not searching.is_set():
                try:
                    models.append(other.search_text("three yellow stars", top_k=5).model_version)
                except Exception as exc:
                    failures.append(repr(exc))
            other.close()

        searcher = threading.Thread(target=search_all_along)
        searcher.start()
        with sessions.begin() as session:
            switched = switch_to(session, store, reindexed.generation, settings.num_shards)
        assert (switched.number, switched.previous, switched.vectors) == (reindexed.generation, 0, SCENES)

        def serving(model: str) -> None:
            deadline = time.monotonic() + 20
            while client.stats().model_version != model:
                assert time.monotonic() < deadline, f"the gateway did not follow to {model}"
                time.sleep(0.1)
            time.sleep(0.5)  # the searching thread gets some answers of this model too
            found = client.search_text("two red circles", top_k=SCENES)
            assert sorted(r.id for r in found.results) == list(range(1, SCENES + 1))  # each exactly once

        serving(reindexed.model_version)
        assert client.stats().index_generation == reindexed.generation
        assert client.stats().reindex_generation == 0  # built: nothing in progress
        with pytest.raises(InvalidInput):
            client.search_text("two red circles", top_k=5, page_token=token)  # the old model's pages

        with sessions.begin() as session:
            back = rollback(session, store, settings.generation_keep_s, settings.num_shards)
        assert (back.number, back.model_version, back.missing) == (0, micro, 0)
        serving(micro)
        assert client.stats().index_generation == 0
        again = client.search_text("two red circles", top_k=SCENES)
        assert [r.id for r in again.results] == [r.id for r in everything.results]
        searching.set()
        searcher.join(timeout=30)
        assert failures == [] and len(models) > 10  # no search failed across the switch and back
        changes = [m for i, m in enumerate(models) if i == 0 or m != models[i - 1]]
        assert changes == [micro, reindexed.model_version, micro]  # never the other model again
        engine.dispose()
    finally:
        client.close()
        server.stop()


def test_the_switch_is_refused_while_an_image_is_missing_and_the_cli_switches_and_rolls_back(
    indexed: tuple[Settings, dict[str, str]], tiny_repository: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    settings, env = indexed
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    half = asyncio_run(areindex(settings.with_overrides(model_repository=tiny_repository), Part(0, 2)))
    number = str(half.generation)
    assert main(["generation", "switch", number]) != 0
    assert f"generation {number} is not complete" in capsys.readouterr().err
    asyncio_run(areindex(settings.with_overrides(model_repository=tiny_repository), Part(1, 2)))
    assert main(["generation", "switch", number]) == 0
    out = capsys.readouterr().out
    assert f"generation {number} (model {half.model_version}) is live: {SCENES} vectors" in out
    assert main(["generation", "switch", number]) != 0  # live now, not building
    assert "not building" in capsys.readouterr().err
    assert main(["generation", "rollback"]) == 0
    assert "generation 0 (model" in capsys.readouterr().out
    assert main(["generation", "rollback"]) != 0  # the micro model is live again: nothing to return to
    assert "no generation to roll back to" in capsys.readouterr().err


def _micro_twin(folder: Path) -> Path:
    """The micro CLIP's shape and tokenizer with other (seeded random) weights: a second model with
    the same image contract, so the indexer's decoded pixels serve both (dual write)."""
    import shutil

    import torch
    from transformers import CLIPConfig, CLIPModel

    from mediasearch.export.micro import MODEL_DIR

    shutil.copytree(MODEL_DIR, folder)
    torch.manual_seed(5)
    CLIPModel(CLIPConfig.from_pretrained(str(MODEL_DIR))).eval().save_pretrained(str(folder))
    return folder


def test_images_indexed_while_a_reindex_builds_are_written_into_it_too(
    tmp_path: Path, micro_repository: Path
) -> None:
    """Dual write: the indexer encodes each new image with the building generation's model as well
    and stages it there, so the switch needs no second reindex pass; a removed one is tombstoned."""
    import shutil

    from mediasearch.export import export_model
    from mediasearch.vector_index.store import store_from_settings
    from mediasearch.vector_index.upgrade import rollback, switch_to

    repo = tmp_path / "repo"
    shutil.copytree(micro_repository, repo)
    export_model(str(_micro_twin(tmp_path / "twin")), repo, "clip2")
    gallery = tmp_path / "gallery"
    write_gallery(gallery, SCENES, 3)
    late = tmp_path / "late"
    late.mkdir()
    for path in sorted(gallery.glob("*.jpg"))[SCENES // 2 :]:  # the second half arrives later
        shutil.move(path, late / path.name)
    settings = Settings.defaults().with_overrides(
        **embedded_settings(tmp_path / "state"), images_root=gallery, model_repository=repo
    )
    assert index_folder(settings, gallery).indexed == SCENES // 2
    first = asyncio_run(areindex(settings.with_overrides(model_name="clip2")))
    assert first.completeness.complete and first.report.indexed == SCENES // 2
    for path in sorted(late.glob("*.jpg")):  # ingested while the generation builds
        shutil.move(path, gallery / path.name)
    assert index_folder(settings, gallery).indexed == SCENES // 2
    removed = sorted(gallery.glob("*.jpg"))[-1]
    removed.unlink()
    assert index_folder(settings, gallery, prune=True).removed == 1
    engine = make_engine(settings.database_url)
    with session_factory(engine).begin() as session:
        switched = switch_to(
            session, store_from_settings(settings, "test"), first.generation, settings.num_shards
        )
    assert (switched.vectors, switched.tombstoned) == (SCENES - 1, 1)  # no second pass needed
    # after the switch, new images go to the generation kept for a rollback too: nothing missing
    write_gallery(tmp_path / "more", 4, 77)
    for path in sorted((tmp_path / "more").glob("*.jpg")):
        shutil.move(path, gallery / f"more-{path.name}")
    assert index_folder(settings, gallery).indexed == 4
    with session_factory(engine).begin() as session:
        back = rollback(session, store_from_settings(settings, "test"), 3600, settings.num_shards)
    assert (back.number, back.missing, back.vectors) == (0, 0, SCENES - 1 + 4)
    engine.dispose()


def test_images_indexed_before_the_indexers_saw_the_generation_are_caught_up_when_the_listing_runs_out(
    tmp_path: Path, micro_repository: Path, tiny_repository: Path
) -> None:
    """An indexer sees a new building generation seconds after it is made; what it published
    meanwhile went to neither side (listed too late, not dual-written). The reindex's source queues
    those once its listing runs out. Here the second half of the gallery is indexed between the
    listing and its end with dual write impossible (the new model is in another repository), as
    by an indexer that had not looked yet."""
    import shutil

    from mediasearch.indexer.reindex import IndexedImages
    from mediasearch.vector_index.store import store_from_settings

    gallery = tmp_path / "gallery"
    write_gallery(gallery, SCENES, 7)
    late = tmp_path / "late"
    late.mkdir()
    for path in sorted(gallery.glob("*.jpg"))[SCENES // 2 :]:
        shutil.move(path, late / path.name)
    settings = Settings.defaults().with_overrides(
        **embedded_settings(tmp_path / "state"), images_root=gallery, model_repository=micro_repository
    )
    assert index_folder(settings, gallery).indexed == SCENES // 2
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    store = store_from_settings(settings, "test")
    with sessions.begin() as session:
        number = building_generation(session, "tiny-model", 16)
    whole, even = (
        IndexedImages(sessions, store, number, Part()),
        IndexedImages(sessions, store, number, Part(0, 2)),
    )
    listed = [d.token for d in whole.receive(1000) or []]
    listed_even = [d.token for d in even.receive(1000) or []]
    assert len(listed) == whole.total == SCENES // 2

    for path in sorted(late.glob("*.jpg")):
        shutil.move(path, gallery / path.name)
    assert index_folder(settings, gallery).indexed == SCENES // 2  # no dual write: no such model here

    caught = [d.token for d in whole.receive(1000) or []]
    assert len(caught) == whole.caught_up == SCENES // 2 and whole.total == SCENES
    assert min(caught) > max(listed)  # only what came after the listing
    assert whole.receive(1000) is None and whole.receive(1000) is None  # nothing more: it stops
    caught_even = [d.token for d in even.receive(1000) or []]
    assert caught_even == [t for t in caught if t % 2 == 0] and all(t % 2 == 0 for t in listed_even)
    engine.dispose()
