"""Route a query to the shards that own its nearest lists, merge to the global top-k.

With a live index generation the router searches the generation's coarse quantizer once, takes
the ``nprobe`` nearest inverted lists of each query and calls only the shards that own one of
them, each with its lists (so a query scans ``nprobe`` lists in all, not per shard). Before the
first generation (the exact layout of a small index) every shard is called and scans everything.

One async interface, two transports: :class:`GrpcRouter` (shard servers, cluster mode) and
:class:`LocalRouter` (in-process shards, embedded mode), so the gateway awaits the same call in
both. Every search has a deadline; each shard's replicas are tried in turn within it. A shard that
no replica answers either fails the search (Unavailable) or, with ``allow_partial``, is left out
and the result is flagged partial. Merging uses score desc, id asc everywhere (``merge_topk``).
Concurrent searches with equal parameters are coalesced into shared fan-outs: every fan-out costs
one RPC per shard, and on a small CPU budget the RPC overhead (serialise, syscalls, thread hand-off
on the server) is comparable to the FAISS work itself. Searches that arrive while two fan-outs run
wait and leave together in the next one (one RPC per shard carries them all, and FAISS searches
them in one call); one that arrives when a slot is free leaves at once, so an idle router adds no
latency. The micro-batcher is the project's one (:class:`mediasearch.batcher.MicroBatcher`).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from mediasearch.batcher import MicroBatcher
from mediasearch.errors import ConfigError, DeadlineExceeded, InvalidInput, MediaSearchError, Unavailable
from mediasearch.rpc import from_rpc_error
from mediasearch.settings import Settings
from mediasearch.vector_index.generation import Generation
from mediasearch.vector_index.merge import NO_ID, merge_topk
from mediasearch.vector_index.shard import SearchParams, Shard

log = logging.getLogger(__name__)
DEFAULTS = Settings.defaults()

_RETRYABLE = (Unavailable, DeadlineExceeded)
_MAX_ROWS = 64  # queries per coalesced fan-out
_STATS_TIMEOUT_S = 1.0  # per replica
Hits = tuple[np.ndarray, np.ndarray, tuple[int, ...]]  # (scores, ids, missing shards)
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 << 20),
]


@dataclass(frozen=True)
class ShardStatus:
    """What a shard reports about itself (``available`` False: no replica answered)."""

    shard: int
    vectors: int = 0
    segments: int = 0
    available: bool = True


@dataclass
class RouteCounters:
    """What the routing did, summed since start: per query, how many lists were scanned and how
    many shards were called (the bench's ``lists_scanned_per_query`` / ``shards_called_per_query``)."""

    queries: int = 0
    lists_scanned: int = 0
    shards_called: int = 0

    def record(self, plan: dict[int, np.ndarray | None], nq: int, lists: np.ndarray | None = None) -> None:
        """One fan-out: ``lists`` the probed lists (None: no generation, every shard scans all)."""
        self.queries += nq
        if lists is None:
            self.shards_called += nq * len(plan)
            return
        self.lists_scanned += lists.size  # every list has an owner, which scans it
        self.shards_called += sum(int((ls >= 0).any(axis=1).sum()) for ls in plan.values() if ls is not None)


@dataclass(frozen=True)
class RouterResult:
    """Global top-k per query; ``partial`` when ``missing_shards`` did not answer."""

    scores: np.ndarray  # (nq, k) float32, -inf where fewer than k results
    ids: np.ndarray  # (nq, k) int64, -1 where fewer than k results
    partial: bool = False
    missing_shards: tuple[int, ...] = ()


class Router(abc.ABC):
    """Fan-out + merge over ``num_shards`` shards with a per-search deadline."""

    def __init__(
        self,
        num_shards: int,
        *,
        deadline_s: float = DEFAULTS.router_deadline_s,
        allow_partial: bool = DEFAULTS.router_allow_partial,
        coalesce: bool = True,
        generations: Callable[[], Generation | None] | None = None,
    ) -> None:
        self.num_shards = num_shards
        self.deadline_s = deadline_s
        self.allow_partial = allow_partial
        self.generations = generations  # the live index generation (None: exact layout)
        self.counters = RouteCounters()
        self._batcher: MicroBatcher[_Search, Hits] | None = None
        if coalesce:
            self._batcher = MicroBatcher(
                self._fan_out_many,
                max_batch=_MAX_ROWS,
                max_wait_s=0.0,
                max_inflight=2,
                split=_same_parameters,
                name="router fan-outs",
            )

    async def search(
        self,
        queries: np.ndarray,
        params: SearchParams,
        *,
        deadline_s: float | None = None,
        model_version: str = "",
    ) -> RouterResult:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.ndim != 2 or len(queries) == 0:
            raise InvalidInput(f"queries must be a non-empty (n, d) array; got {queries.shape}")
        deadline = asyncio.get_running_loop().time() + (deadline_s or self.deadline_s)
        key = (params, model_version, queries.shape[1])
        if self._batcher is None:
            scores, ids, missing = await self._fan_out(queries, key, deadline)
        else:
            ((scores, ids, missing),) = await self._batcher.submit([_Search(queries, key, deadline)])
        return RouterResult(scores, ids, bool(missing), missing)

    async def _fan_out_many(self, searches: list[_Search]) -> list[Hits]:
        """One fan-out for searches of equal parameters (``_same_parameters`` grouped them), split
        back per search; it runs within the earliest of their deadlines."""
        queries = np.concatenate([s.queries for s in searches]) if len(searches) > 1 else searches[0].queries
        scores, ids, missing = await self._fan_out(
            queries, searches[0].key, min(s.deadline for s in searches)
        )
        out, row = [], 0
        for s in searches:
            n = len(s.queries)
            out.append((scores[row : row + n], ids[row : row + n], missing))
            row += n
        return out

    async def _fan_out(self, queries: np.ndarray, key: tuple[object, ...], deadline: float) -> Hits:
        params, model_version = key[0], key[1]
        assert isinstance(params, SearchParams) and isinstance(model_version, str)
        generation, plan = self._plan(queries, params)
        number = generation.number if generation is not None else 0
        calls = [
            self._search_shard(s, queries, params, deadline, model_version, lists, number)
            for s, lists in plan.items()
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        answered, missing = [], []
        for shard, outcome in zip(plan, outcomes, strict=True):
            if isinstance(outcome, _RETRYABLE):
                log.warning("shard %d did not answer: %s", shard, outcome)
                missing.append(shard)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answered.append(outcome)
        if missing and (not self.allow_partial or not answered):
            raise Unavailable(f"shards {missing} of {self.num_shards} did not answer")
        if not answered:  # no shard owns a probed list: nothing indexed near these queries
            empty = np.full((len(queries), params.k), NO_ID, dtype=np.int64)
            return np.full(empty.shape, -np.inf, dtype=np.float32), empty, ()
        scores, ids = merge_topk([a[0] for a in answered], [a[1] for a in answered], params.k)
        return scores, ids, tuple(missing)

    def _plan(
        self, queries: np.ndarray, params: SearchParams
    ) -> tuple[Generation | None, dict[int, np.ndarray | None]]:
        """Which shards to call, with which lists: the owners of the queries' nearest lists under
        the live generation; every shard (each probes its own copy) when there is no generation
        or it was trained for another shard count than this router's."""
        generation = self.generations() if self.generations is not None else None
        if generation is not None and generation.num_shards > self.num_shards:
            log.warning(
                "generation %d spreads lists over %d shards, this router knows %d: asking every shard",
                generation.number, generation.num_shards, self.num_shards,
            )  # fmt: skip
            generation = None
        if generation is None:
            plan: dict[int, np.ndarray | None] = {s: None for s in range(self.num_shards)}
            self.counters.record(plan, len(queries))
        else:
            lists = generation.probe(queries, params.nprobe)
            plan = dict(generation.route(lists))
            self.counters.record(plan, len(queries), lists)
        return generation, plan

    @abc.abstractmethod
    async def _search_shard(
        self,
        shard: int,
        queries: np.ndarray,
        params: SearchParams,
        deadline: float,
        model_version: str,
        lists: np.ndarray | None,
        generation: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) from one shard scanning ``lists`` of ``generation`` (None: all it holds,
        or its own quantizer's choice), or Unavailable/DeadlineExceeded."""

    @abc.abstractmethod
    async def stats(self) -> list[ShardStatus]:
        """One status per shard, in shard order; a shard that does not answer is unavailable."""

    async def close(self) -> None:
        """Release transports (implementations call this too)."""
        if self._batcher is not None:
            await self._batcher.close()


class LocalRouter(Router):
    """In-process shards (embedded mode): each planned shard searched in a worker thread (FAISS
    drops the GIL, so shards run in parallel, and a stuck one misses only its own deadline)."""

    def __init__(self, shards: Sequence[Shard], **kwargs: Any) -> None:
        super().__init__(len(shards), **kwargs)
        self.shards = list(shards)

    async def _search_shard(
        self,
        shard: int,
        queries: np.ndarray,
        params: SearchParams,
        deadline: float,
        model_version: str,
        lists: np.ndarray | None,
        generation: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        search = functools.partial(
            self.shards[shard].search, queries, params, model_version, lists=lists, generation=generation
        )
        call = loop.run_in_executor(None, search)  # not to_thread: no context copy, ~40 us less
        try:
            return await asyncio.wait_for(call, timeout=max(remaining, 0.0))
        except TimeoutError as exc:
            raise DeadlineExceeded(f"shard {shard} missed the deadline") from exc

    async def stats(self) -> list[ShardStatus]:
        out = []
        for shard in self.shards:
            s = shard.stats()
            out.append(ShardStatus(s.shard, s.vectors, len(s.segments)))
        return out


class GrpcRouter(Router):
    """Shard servers over gRPC (grpc.aio). ``replicas[s]`` lists the addresses of shard s."""

    def __init__(
        self,
        replicas: Sequence[Sequence[str]],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(len(replicas), **kwargs)
        self.credentials = credentials  # TLS to the shard servers (None: plaintext)
        if any(not r for r in replicas):
            raise InvalidInput("every shard needs at least one replica address")
        self.replicas = [list(r) for r in replicas]
        self._stubs: dict[str, object] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._turn = [itertools.count() for _ in replicas]

    @classmethod
    def from_addresses(cls, addresses: Sequence[str], **kwargs: Any) -> GrpcRouter:
        """From settings' ``shard_addresses``: one string per shard, replicas split by '|'."""
        return cls([a.split("|") for a in addresses], **kwargs)

    def _stub(self, address: str) -> object:
        from mediasearch._proto.mediasearch.v1 import shard_pb2_grpc

        stub = self._stubs.get(address)
        if stub is None:
            if self.credentials is not None:
                channel = grpc.aio.secure_channel(address, self.credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels.append(channel)
            stub = self._stubs[address] = shard_pb2_grpc.ShardServiceStub(channel)
        return stub

    async def _search_shard(
        self,
        shard: int,
        queries: np.ndarray,
        params: SearchParams,
        deadline: float,
        model_version: str,
        lists: np.ndarray | None,
        generation: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        from mediasearch._proto.mediasearch.v1 import shard_pb2

        request = shard_pb2.ShardSearchRequest(
            queries=queries.astype("<f4").tobytes(),
            dim=queries.shape[1],
            k=params.k,
            nprobe=params.nprobe,
            ef_search=params.ef_search,
            model_version=model_version,
            lists=b"" if lists is None else lists.astype("<i4").tobytes(),
            index_generation=generation,
            rerank=params.rerank,
        )
        addresses = self.replicas[shard]
        start = next(self._turn[shard])  # rotate the first replica tried: spreads the load
        last: MediaSearchError = Unavailable(f"shard {shard} has no replica")
        for attempt in range(len(addresses)):
            address = addresses[(start + attempt) % len(addresses)]
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise DeadlineExceeded(f"shard {shard}: deadline passed") from last
            try:
                response = await self._stub(address).Search(request, timeout=remaining)  # type: ignore[attr-defined]
            except grpc.RpcError as exc:
                last = from_rpc_error(exc, f"shard {shard} at {address}")
                if not isinstance(last, _RETRYABLE):
                    raise last from exc
                continue
            return _decode(response, len(queries), params.k)
        raise last

    async def stats(self) -> list[ShardStatus]:
        return list(await asyncio.gather(*(self._shard_stats(s) for s in range(self.num_shards))))

    async def _shard_stats(self, shard: int) -> ShardStatus:
        """Its replicas asked in turn, the first answer kept; unavailable when none answers."""
        from mediasearch._proto.mediasearch.v1 import shard_pb2

        for address in self.replicas[shard]:
            try:
                s = await self._stub(address).Stats(shard_pb2.ShardStatsRequest(), timeout=_STATS_TIMEOUT_S)  # type: ignore[attr-defined]
            except grpc.RpcError as exc:
                log.warning("%s", from_rpc_error(exc, f"stats of shard {shard} at {address}"))
                continue
            return ShardStatus(shard, s.vectors, len(s.segment_ids))
        return ShardStatus(shard, available=False)

    async def close(self) -> None:
        await super().close()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


@dataclass(frozen=True)
class _Search:
    queries: np.ndarray
    key: tuple[object, ...]  # (SearchParams, model version, dim): what a shared fan-out must share
    deadline: float


def _same_parameters(searches: list[_Search]) -> list[list[int]]:
    """Groups of searches that can share a fan-out: equal keys, at most ``_MAX_ROWS`` query rows."""
    groups: dict[tuple[object, ...], list[list[int]]] = {}
    rows: dict[tuple[object, ...], int] = {}
    for i, s in enumerate(searches):
        parts = groups.setdefault(s.key, [[]])
        if parts[-1] and rows[s.key] + len(s.queries) > _MAX_ROWS:
            parts.append([])
            rows[s.key] = 0
        parts[-1].append(i)
        rows[s.key] = rows.get(s.key, 0) + len(s.queries)
    return [part for parts in groups.values() for part in parts]


def _decode(response: object, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), NO_ID, dtype=np.int64)
    for row, hits in enumerate(response.results):  # type: ignore[attr-defined]
        n = min(len(hits.ids), k)
        ids[row, :n] = hits.ids[:n]
        scores[row, :n] = hits.scores[:n]
    return scores, ids


def make_router(
    settings: Settings,
    local_shards: Sequence[Shard] = (),
    generations: Callable[[], Generation | None] | None = None,
) -> Router:
    """The one factory: shard servers when ``shard_addresses`` is set (cluster), else the given
    in-process shards (embedded); ``generations`` gives the live index generation to route by."""
    options: dict[str, Any] = {
        "deadline_s": settings.router_deadline_s,
        "allow_partial": settings.router_allow_partial,
        "generations": generations,
    }
    if settings.shard_addresses:
        from mediasearch.tls import internal_channel_credentials

        credentials = internal_channel_credentials(settings)
        return GrpcRouter.from_addresses(settings.shard_addresses, credentials=credentials, **options)
    if not local_shards:
        raise ConfigError("no MEDIASEARCH_SHARD_ADDRESSES and no in-process shards to route to")
    return LocalRouter(local_shards, **options)
