"""A model upgrade on the ``make up`` cluster (issue 19), as an operator runs it while users search.

The cluster (:class:`~mediasearch.dev.cluster.DevCluster` on free loopback ports, supervised as
``mediasearch up`` does: a child that exits is started again) serves one model repository holding
two models with the same image contract: ``clip``, the committed micro CLIP, and ``clip2``, the
micro CLIP's shape and tokenizer with seeded random weights (so the indexer's dual write applies).
Images go in through the bucket, one client searches the gateway all along, and:

1. the gallery is indexed with ``clip``;
2. ``mediasearch reindex --model-name clip2`` is SIGKILLed once it has staged segments, then run
   again to completion (it resumes);
3. meanwhile images are PUT (the indexer writes them into the building generation too) and
   deleted (the switch tombstones them);
4. ``mediasearch generation switch N``: the gateway follows; every image is in the new generation
   exactly once, the deleted ones nowhere; one image PUT after the switch is indexed by the
   restarted indexer with ``clip2`` (and, dual write again, into the generation kept for a rollback);
5. ``mediasearch generation rollback``: ``clip`` serves again, every image once, that one included.

No search fails, and none answers from the wrong generation: never ``clip2`` before the switch,
never ``clip`` again after a ``clip2`` answer until the rollback, only ids of indexed images.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mediasearch.client import SearchClient
from mediasearch.dev.cluster import QUEUE, ClusterOptions, DevCluster
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.processes import mediasearch_command
from mediasearch.dev.workload import ModelSearcher
from mediasearch.export.micro.scenes import read_gallery, write_gallery
from mediasearch.metadata.db import make_engine, session_factory
from mediasearch.metadata.models import INDEXED, ImageRow, SegmentRow
from mediasearch.model_manifest import ModelManifest
from mediasearch.settings import Settings
from mediasearch.vector_index.upgrade import STAGED, building
from tests.support.postgres import Postgres

FIRST, SECOND = "clip", "clip2"
IMAGES = 160  # indexed with the first model
NEW = 16  # PUT around the resumed reindex: half while it runs, half after it exited
DELETED = 16  # deleted likewise
SENTENCES = ("two red circles", "a large blue square", "three yellow stars", "a small green triangle")
ALL = 1000  # MEDIASEARCH_GATEWAY_MAX_TOP_K here: one search returns the whole index


def _micro_twin(folder: Path) -> Path:
    """The micro CLIP's shape and tokenizer with other (seeded random) weights: a second model with
    the same image contract (tests/integration/test_reindex.py makes the same one)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from mediasearch.export.micro import MODEL_DIR

    shutil.copytree(MODEL_DIR, folder)
    torch.manual_seed(5)
    CLIPModel(CLIPConfig.from_pretrained(str(MODEL_DIR))).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def two_models(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository: the micro CLIP as ``clip``, its twin as ``clip2``."""
    from mediasearch.export import export_model

    tmp = tmp_path_factory.mktemp("models")
    repo = tmp / "model_repository"
    shutil.copytree(micro_repository, repo)
    export_model(str(_micro_twin(tmp / "twin")), repo, SECOND)
    return repo


@contextlib.contextmanager
def _cluster(repo: Path, database_url: str, work: Path) -> Iterator[tuple[DevCluster, dict[str, Any]]]:
    """The make-up cluster, supervised in a thread (the indexer exits at a model switch and is
    started again, as ``mediasearch up`` does); stopped when the block ends."""
    settings = {
        "INDEXER_WAIT_TIME_S": 1,
        "INDEXER_VISIBILITY_TIMEOUT_S": 5,  # the deliveries of an indexer stopped by the switch
        "GATEWAY_MAX_TOP_K": ALL,
        "ROUTER_DEADLINE_S": 5,  # 2 busy cores: no partial answer for a slow shard
        "TRITON_TIMEOUT_S": 60,
    }
    options = ClusterOptions(
        workdir=work, repository=repo, database_url=database_url, free_ports=True,
        segment_store_url=(work / "segments").as_uri(), shard_workers=2,
        env={f"MEDIASEARCH_{k}": str(v) for k, v in settings.items()},
    )  # fmt: skip
    cluster = DevCluster(options, Settings.defaults())
    supervisor = threading.Thread(target=cluster.supervise, name="supervisor", daemon=True)
    try:
        info = cluster.start()
        supervisor.start()
        yield cluster, info
    finally:
        cluster.request_stop()
        if supervisor.is_alive():
            supervisor.join(timeout=30)
        cluster.stop()


def _wait(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f}s"
        time.sleep(poll_s)


@dataclass
class Upgrade:
    """The cluster as the test drives it, and what it knows so far."""

    sessions: Any
    bucket: NotifyingBucket
    client: SearchClient
    searcher: ModelSearcher
    env: dict[str, str]  # the indexer's: what `mediasearch reindex` and `generation` need
    work: Path
    repo: Path
    old: str  # the models' versions
    new: str
    expected: dict[str, int] = field(default_factory=dict)  # key -> id: what the index must serve
    deleted: dict[str, int] = field(default_factory=dict)
    known: set[int] = field(default_factory=set)  # every id indexed at some point
    at: dict[str, float] = field(default_factory=dict)  # monotonic: switch, rollback, deletes_settled

    # -- reads -------------------------------------------------------------------------------------
    def ids(self, prefix: str) -> dict[str, int]:
        """key -> id of the indexed images under ``prefix``."""
        with self.sessions() as s:
            rows = s.execute(select(ImageRow.key, ImageRow.id).where(ImageRow.status == INDEXED))
            return {key: int(i) for key, i in rows if key.startswith(prefix)}

    def live_keys(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` still have a row that is not removed."""
        with self.sessions() as s:
            return set(
                s.scalars(select(ImageRow.key).where(ImageRow.key.in_(keys), ImageRow.status != "removed"))
            )

    def staged(self) -> int:
        """Vectors in staged segments (the reindex's, and the dual write's)."""
        with self.sessions() as s:
            return int(s.scalar(select(func.sum(SegmentRow.count)).where(SegmentRow.state == STAGED)) or 0)

    def building(self) -> int | None:
        with self.sessions() as s:
            row = building(s)
            return row.number if row is not None else None

    def served(self, model: str) -> list[int]:
        """Every id the index serves, through the gateway (the exact layout: one search finds all)."""
        r = self.client.search_text("two red circles", top_k=ALL)
        assert not r.partial, "a partial answer to the whole-index search"
        assert r.model_version == model, f"the whole-index search answered by {r.model_version}, not {model}"
        return [x.id for x in r.results]

    def expect_served(self, model: str, what: str) -> None:
        """Every expected image served exactly once by ``model``, no deleted one, nothing else."""
        served, by_id, dead = (
            self.served(model),
            {i: k for k, i in self.expected.items()},
            set(self.deleted.values()),
        )
        doubled = sorted(i for i, n in Counter(served).items() if n > 1)
        missing = sorted(set(by_id) - set(served))
        gone, unknown = sorted(set(served) & dead), sorted(set(served) - set(by_id) - dead)
        assert not (doubled or missing or gone or unknown), (
            f"{what}: {len(served)} ids served for {len(by_id)} indexed images; twice: {doubled[:20]}; "
            f"missing: {[(i, by_id[i]) for i in missing[:20]]}; deleted but served: {gone[:20]}; "
            f"never indexed: {unknown[:20]}"
        )

    # -- acts --------------------------------------------------------------------------------------
    def put(self, images: dict[str, bytes]) -> None:
        for key, data in images.items():
            self.bucket.put(key, data, "image/jpeg")

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.bucket.s3.delete_object(Bucket=self.bucket.name, Key=key)

    def mediasearch(self, *args: str, log: str, **options: object) -> subprocess.CompletedProcess[str]:
        argv = mediasearch_command(*args, **options)
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=180)
        (self.work / f"{log}.log").write_text(out.stdout + out.stderr)
        return out

    def reindex(self, log: str) -> subprocess.Popen[bytes]:
        argv = mediasearch_command("reindex", model_repository=self.repo.resolve(), model_name=SECOND,
                                   no_progress=True, batch_size=2)  # fmt: skip
        with (self.work / log).open("w") as out:
            return subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    # -- the steps ---------------------------------------------------------------------------------
    def index(self, images: dict[str, bytes]) -> None:
        self.put(images)
        _wait("the gallery indexed", lambda: _indexed(self.client) >= len(images), 90)
        _wait("the shards serving it", lambda: self.client.stats().vectors >= len(images), 30)
        self.expected = self.ids("scenes/")
        assert sorted(self.expected) == sorted(images), "not every image of the gallery is indexed"
        self.known |= set(self.expected.values())
        self.expect_served(self.old, FIRST)

    def reindex_killed(self) -> tuple[int, int]:
        """The reindex, SIGKILLed a quarter of the way: its generation, the vectors staged by then."""
        killed = self.reindex("reindex-killed.log")
        try:
            _wait(
                "staged segments", lambda: self.staged() >= IMAGES // 4 or killed.poll() is not None, 90, 0.02
            )
            assert killed.poll() is None, (
                f"the reindex ended (exit {killed.returncode}) before it was killed:\n"
                + (self.work / "reindex-killed.log").read_text()[-2000:]
            )
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=10)
        return _wait("the building generation", self.building, 5), self.staged()

    def reindex_resumed(self, number: int, at_kill: int, later: dict[str, bytes], doomed: list[str]) -> None:
        """The reindex again, to completion; half of ``later`` PUT and half of ``doomed`` deleted
        while it runs, the rest after it has exited (only the indexer's dual write takes those)."""
        resumed = self.reindex("reindex.log")
        _wait(
            "the resumed reindex staging", lambda: self.staged() > at_kill or resumed.poll() is not None, 90
        )
        keys = sorted(later)
        self.put({k: later[k] for k in keys[: len(keys) // 2]})
        self.delete(doomed[: len(doomed) // 2])
        code = resumed.wait(timeout=180)
        log = (self.work / "reindex.log").read_text()
        assert code == 0, f"the resumed reindex exited {code}:\n{log[-3000:]}"
        assert f"generation {number} (model {self.new}" in log, log[-2000:]
        assert self.staged() > at_kill, "the resumed reindex staged nothing"
        self.put({k: later[k] for k in keys[len(keys) // 2 :]})
        self.delete(doomed[len(doomed) // 2 :])
        _wait("the new images indexed", lambda: set(self.ids("later/")) == set(later), 60)
        _wait("the deletions processed", lambda: not self.live_keys(doomed), 60)
        self.deleted = {key: self.expected.pop(key) for key in doomed}
        self.expected.update(self.ids("later/"))
        self.known |= set(self.expected.values())
        dead = set(self.deleted.values())
        _wait("the deleted images out of the answers", lambda: not set(self.served(self.old)) & dead, 30)
        self.at["deletes_settled"] = time.monotonic()
        self.expect_served(self.old, f"{FIRST} before the switch")

    def switch(self, number: int) -> None:
        self.at["switch"] = time.monotonic()
        done = self.mediasearch("generation", "switch", str(number), log="switch")
        assert done.returncode == 0, f"the switch to {number} failed:\n{done.stdout}{done.stderr}"
        said = f"generation {number} (model {self.new}) is live: {len(self.expected)} vectors"
        assert said in done.stdout, done.stdout
        _wait(f"the gateway serving {self.new}", lambda: self.client.stats().model_version == self.new, 30)
        time.sleep(3)  # searches go on with the new model
        self.expect_served(self.new, f"{SECOND} after the switch")

    def index_after_switch(self, key: str, data: bytes) -> int:
        """An image PUT now: the indexer (stopped by the switch, started again) takes clip2."""
        self.put({key: data})
        (late,) = _wait("the image PUT after the switch indexed", lambda: self.ids(key).values(), 90)
        self.known.add(late)
        self.expected[key] = late
        _wait("it served", lambda: late in self.served(self.new), 30)
        self.expect_served(self.new, f"{SECOND} after an image PUT after the switch")
        return int(late)

    def rollback(self) -> None:
        """Back to the first model. The generation it serves is kept in the exact layout, so the
        indexer wrote the image PUT after the switch there too (dual write): nothing is missing."""
        self.at["rollback"] = time.monotonic()
        back = self.mediasearch("generation", "rollback", log="rollback")
        assert back.returncode == 0, f"the rollback failed:\n{back.stdout}{back.stderr}"
        said = f"generation 0 (model {self.old}) is live: {len(self.expected)} vectors"
        assert said in back.stdout and "have no vector" not in back.stdout, back.stdout
        _wait(
            f"the gateway serving {self.old} again", lambda: self.client.stats().model_version == self.old, 30
        )
        time.sleep(3)
        self.expect_served(self.old, f"{FIRST} after the rollback")


def _indexed(client: SearchClient) -> int:
    return int(client.stats().images_by_status.get("indexed", 0))


@contextlib.contextmanager
def _driving(
    cluster: DevCluster, info: dict[str, Any], url: str, repo: Path, work: Path
) -> Iterator[Upgrade]:
    engine = make_engine(url)
    client = SearchClient(info["gateway"], timeout_s=30)
    client.wait_ready()
    up = Upgrade(
        sessions=session_factory(engine),
        bucket=NotifyingBucket.create(info["s3_endpoint"], info["bucket"], queue=QUEUE, notify=False),
        client=client, searcher=ModelSearcher(info["gateway"], SENTENCES), work=work, repo=repo,
        env={**os.environ, **cluster.children["indexer"].env}, old=ModelManifest.load(repo, FIRST).version,
        new=ModelManifest.load(repo, SECOND).version,
    )  # fmt: skip
    try:
        yield up
    finally:
        if up.searcher.is_alive():
            up.searcher.stop()
        client.close()
        engine.dispose()


def _judge(up: Upgrade) -> list[str]:
    """What went wrong in the searching client's answers (the module doc's rules), one line each."""
    old, new, switch_at, rollback_at = up.old, up.new, up.at["switch"], up.at["rollback"]
    dead = set(up.deleted.values())
    bad: list[str] = []
    phase = "old"  # old -> new (the first clip2 answer) -> back (the first clip answer after the rollback)
    for a in sorted(up.searcher.answers, key=lambda a: a.done):
        at = f"sent {a.sent - switch_at:+.2f}s from the switch"
        if a.model is None:
            bad.append(f"{at}: failed: {a.error}")
            continue
        if a.model not in (old, new):
            bad.append(f"{at}: model {a.model}, neither {old} nor {new}")
        elif a.model == new and (a.sent < switch_at or phase == "back"):
            bad.append(f"{at}: {new} {'before the switch' if phase == 'old' else 'after the rollback'}")
        elif a.model == old and phase == "new" and a.sent < rollback_at:
            bad.append(f"{at}: {old} after a {new} answer, before the rollback")
        if a.model == new and phase == "old":
            phase = "new"
        elif a.model == old and phase == "new" and a.sent >= rollback_at:
            phase = "back"
        if len(set(a.ids)) != len(a.ids):
            bad.append(f"{at}: an id twice in one answer: {a.ids}")
        if set(a.ids) - up.known:
            bad.append(f"{at} ({a.model}): ids of no indexed image {sorted(set(a.ids) - up.known)}")
        if a.sent > up.at["deletes_settled"] and set(a.ids) & dead:
            bad.append(f"{at} ({a.model}): deleted images {sorted(set(a.ids) & dead)}")
    return bad


def test_a_model_upgrade_under_searches_loses_no_search_and_no_image_and_rolls_back(
    two_models: Path, tmp_path: Path, postgres: Postgres
) -> None:
    write_gallery(tmp_path / "gallery", IMAGES + NEW + 1, seed=19, size=96)
    scenes = [item.image.read_bytes() for item in read_gallery(tmp_path / "gallery")]
    first = {f"scenes/{i:04d}.jpg": scenes[i] for i in range(IMAGES)}
    later = {f"later/{i:04d}.jpg": scenes[IMAGES + i] for i in range(NEW)}
    doomed = sorted(first)[:: IMAGES // DELETED][:DELETED]
    work = tmp_path / "work"
    with (
        postgres() as url,
        _cluster(two_models, url, work) as (cluster, info),
        _driving(cluster, info, url, two_models, work) as up,
    ):
        assert up.old != up.new
        up.index(first)  # 1.
        up.searcher.start()  # searches from here to the end
        number, at_kill = up.reindex_killed()  # 2.
        up.reindex_resumed(number, at_kill, later, doomed)  # 2. and 3.
        up.switch(number)  # 4.
        up.index_after_switch("after/switch.jpg", scenes[-1])
        up.rollback()  # 5.
        up.searcher.stop()
    answers = up.searcher.answers
    seen = [a.model for a in sorted(answers, key=lambda a: a.done) if a.model is not None]
    changes = [m for i, m in enumerate(seen) if i == 0 or m != seen[i - 1]]
    summary = f"{len(answers)} searches, {sum(a.partial for a in answers)} partial; models in turn: {changes}"
    bad = _judge(up)
    assert not bad, f"{len(bad)} wrong answers ({summary}):\n" + "\n".join(bad[:30])
    assert changes == [up.old, up.new, up.old], summary
    assert sum(a.model == up.new for a in answers) >= 5, summary
