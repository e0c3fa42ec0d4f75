"""What the index serves, compared with what it should serve (chaos and soak runs).

A shard server is asked, as the router asks it, for everything it serves: one Search that probes
every inverted list with k = 10,000 returns each live vector of each of its segments, tombstoned ids
left out, an id held by two live segments twice (:func:`served`). What a user can find is what the
shard servers return *and* the metadata database holds as indexed (the gateway joins the two).

:func:`audit` checks that against a :class:`~mediasearch.dev.workload.Ledger`, for every replica of
every shard and through the gateways:

- lost: a key whose last PUT is not findable on some replica of its shard (nothing, or only an
  older version);
- duplicated: a key findable under two ids, or one id served twice, or a key twice in one gateway
  answer;
- resurrected: a deleted key that is findable on some replica or comes back from the gateway.

:func:`settle` waits, after the load stopped, until the queue is empty and the audit is clean (or
time runs out: what is still wrong then is the run's finding).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from sqlalchemy import text

from mediasearch.dev.workload import Ledger, LoadCluster
from mediasearch.metadata.db import make_engine

MAX_SERVED = 10_000  # the shard server's largest k
_EVERY_LIST = 1 << 20  # nprobe and efSearch beyond any nlist: the quantizer returns every list


def served(address: str, dim: int, timeout_s: float = 10.0) -> list[int]:
    """Every id the shard server at ``address`` serves, repeats kept (see the module doc)."""
    from mediasearch._proto.mediasearch.v1 import shard_pb2, shard_pb2_grpc

    query = np.random.default_rng(0).standard_normal(dim).astype("<f4")
    query /= np.linalg.norm(query)
    request = shard_pb2.ShardSearchRequest(
        queries=query.tobytes(), dim=dim, k=MAX_SERVED, nprobe=_EVERY_LIST, ef_search=_EVERY_LIST
    )
    with grpc.insecure_channel(address) as channel:
        response = shard_pb2_grpc.ShardServiceStub(channel).Search(request, timeout=timeout_s)
    ids = [int(i) for i in response.results[0].ids]
    if len(ids) >= MAX_SERVED:
        raise RuntimeError(f"{address} serves {MAX_SERVED} vectors or more: too many to audit this way")
    return ids


@dataclass(frozen=True)
class Row:
    id: int
    key: str
    etag: str
    status: str


def rows(database_url: str, bucket: str) -> dict[int, Row]:
    """The metadata rows of ``bucket``'s images, by id."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT id, key, etag, status FROM images WHERE bucket = :bucket"), {"bucket": bucket}
            ).all()
    finally:
        engine.dispose()
    return {
        int(r[0]): Row(int(r[0]), str(r[1]), str(r[2] or "").strip('"').lower(), str(r[3])) for r in found
    }


@dataclass
class AuditResult:
    images: int  # keys whose last operation was a PUT
    deleted: int  # keys whose last operation was a delete
    lost: set[str] = field(default_factory=set)
    stale: set[str] = field(default_factory=set)  # lost, with an older version findable instead
    duplicated: set[str] = field(default_factory=set)
    resurrected: set[str] = field(default_factory=set)
    orphans: set[int] = field(default_factory=set)  # served ids without an indexed row (invisible)
    unreachable: list[str] = field(default_factory=list)  # replicas that did not answer the audit

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.resurrected or self.unreachable)

    def describe(self, limit: int = 10) -> str:
        def some(keys: set[str]) -> str:
            return ", ".join(sorted(keys)[:limit]) + (" ..." if len(keys) > limit else "")

        parts = [f"{name} {len(keys)}: {some(keys)}" for name, keys in (
            ("lost", self.lost), ("of them stale", self.stale), ("duplicated", self.duplicated),
            ("resurrected", self.resurrected),
        ) if keys]  # fmt: skip
        if self.unreachable:
            parts.append(f"replicas not answering: {', '.join(self.unreachable)}")
        if self.orphans:
            parts.append(f"{len(self.orphans)} served ids without an indexed row")
        return "; ".join(parts) or "every key as expected"


def audit(
    load: LoadCluster,
    ledger: Ledger,
    *,
    gateway_answers: Sequence[Sequence[str]] = (),
) -> AuditResult:
    """Compare what every replica serves (and ``gateway_answers``: the keys of gateway responses,
    one list per response) with ``ledger`` (see the module doc)."""
    live, gone = ledger.live(), ledger.gone()
    result = AuditResult(images=len(live), deleted=len(gone))
    metadata = rows(load.info["database_url"], load.info["bucket"])
    served_by: dict[str, list[int]] = {}
    for replicas in load.replicas():
        for address in replicas:
            try:
                served_by[address] = served(address, load.dim)
            except grpc.RpcError:
                result.unreachable.append(address)
    # what a caller sees when the router asks replica j of every shard (checking every j covers
    # every replica: a key missing from one replica of its shard is missing from that view)
    for view in zip(*load.replicas(), strict=True):
        ids = [i for address in view for i in served_by.get(address, [])]
        check_view(ids, metadata, live, gone, result)
    for answer in gateway_answers:
        counts = collections.Counter(answer)
        result.duplicated.update(k for k, n in counts.items() if n > 1)
        result.resurrected.update(k for k in counts if k in gone)
    return result


def check_view(
    ids: list[int], metadata: Mapping[int, Row], live: Mapping[str, str], gone: set[str], result: AuditResult
) -> None:
    """The ids one replica of each shard serves against the ledger (accumulated into ``result``)."""
    by_key: dict[str, list[Row]] = collections.defaultdict(list)
    repeats = collections.Counter(ids)
    for image_id, times in repeats.items():
        row = metadata.get(image_id)
        if row is None or row.status != "indexed":
            result.orphans.add(image_id)
            continue
        by_key[row.key].append(row)
        if times > 1:
            result.duplicated.add(row.key)
    for key, etag in live.items():
        findable = by_key.get(key, [])
        if len(findable) > 1:
            result.duplicated.add(key)
        if not any(r.etag == etag for r in findable):
            result.lost.add(key)
            if findable:
                result.stale.add(key)
    result.resurrected.update(k for k in by_key if k in gone)


def findable_everywhere(load: LoadCluster, key: str, etag: str) -> bool:
    """Whether ``key`` (its version ``etag``) is indexed and served by every replica of one shard."""
    ids = {r.id for r in rows(load.info["database_url"], load.info["bucket"]).values()
           if r.key == key and r.etag == etag and r.status == "indexed"}  # fmt: skip
    if not ids:
        return False
    for replicas in load.replicas():
        try:
            if all(ids & set(served(address, load.dim)) for address in replicas):
                return True
        except grpc.RpcError:
            continue
    return False


def settle(
    load: LoadCluster,
    ledger: Ledger,
    timeout_s: float,
    *,
    gateway_answers: Callable[[], Sequence[Sequence[str]]] = lambda: (),
    poll_s: float = 1.0,
) -> tuple[AuditResult, float]:
    """Audit until the queue is empty and the audit is clean, or ``timeout_s`` passed; the last
    audit and the seconds it took to get there."""
    started = time.monotonic()
    while True:
        queued = load.bucket.messages()
        result = audit(load, ledger)
        if queued == 0 and result.clean:
            result = audit(load, ledger, gateway_answers=gateway_answers())
        if (queued == 0 and result.clean) or time.monotonic() - started > timeout_s:
            return result, time.monotonic() - started
        time.sleep(poll_s)


def gateway_keys(addresses: str, queries: Sequence[str], top_k: int = 100) -> list[list[str]]:
    """The keys each of ``queries`` returns through the gateways (first pages)."""
    from mediasearch.client import SearchClient

    with SearchClient(addresses, timeout_s=10, retries=3) as client:
        return [[r.key for r in client.search_text(q, top_k=top_k).results] for q in queries]
