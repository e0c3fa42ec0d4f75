"""The query path: encode -> router (shards) -> candidates after the page cursor -> one batched
metadata lookup -> filters -> a page of results.

Filtering is oversample-and-refill (see :mod:`mediasearch.gateway.filters` for why not push-down): a round
draws ``k`` candidates from the router, skips those at or before the page cursor, looks the rest
up in one query and keeps those that pass. Without filters the first round draws exactly what the
page needs (``served + top_k`` — the next page re-draws from the top, which FAISS does in one
call), so an ordinary search is one encode, one fan-out and one metadata query. With filters it
draws ``gateway_oversample`` times more, and while the page is short and the shards returned all
it asked for, draws again 4x more, up to ``gateway_max_candidates``. Candidates below
``min_score`` end the search (the ranking is by score).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from mediasearch.batcher import MicroBatcher
from mediasearch.encoders.base import Encoder
from mediasearch.errors import (
    DeadlineExceeded,
    ImageError,
    InvalidInput,
    ManifestMismatch,
    NotFound,
    Unavailable,
)
from mediasearch.gateway.admission import Admission
from mediasearch.gateway.filters import Filters
from mediasearch.gateway.locator import ImageLocator
from mediasearch.gateway.paging import PageToken, decode_token, encode_token, fingerprint
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.metadata.readers import ImageReader
from mediasearch.settings import FromSettings, Settings
from mediasearch.vector_index.router import Router
from mediasearch.vector_index.shard import DEFAULT_K, SearchParams

log = logging.getLogger(__name__)
T = TypeVar("T")
_GROWTH = 4
_MODEL_RETRIES = 5  # a query's model refused by the shards: try again (the switch's poll window)


@dataclass(frozen=True)
class QueryLimits(FromSettings):
    """What a search may ask and how it runs (``MEDIASEARCH_GATEWAY_*``, ``MEDIASEARCH_SEARCH_*``)."""

    max_top_k: int
    max_query_chars: int
    deadline_s: float
    max_active: int
    max_inflight: int
    max_candidates: int
    oversample: float
    token_secrets: tuple[str, ...]  # signs with the first; accepts any (key rotation)
    nprobe: int
    ef_search: int
    default_top_k: int = DEFAULT_K  # top_k 0 in a request (proto3's "not set")

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryLimits:
        return cls(
            max_top_k=settings.gateway_max_top_k,
            max_query_chars=settings.gateway_max_query_chars,
            deadline_s=settings.gateway_deadline_s,
            max_active=settings.gateway_max_active,
            max_inflight=settings.gateway_max_inflight,
            max_candidates=settings.gateway_max_candidates,
            oversample=settings.gateway_oversample,
            token_secrets=settings.token_secrets(),
            nprobe=settings.search_nprobe,
            ef_search=settings.search_ef,
        )


@dataclass(frozen=True)
class PageRequest:
    """What every search asks besides its query: how many, which, from where."""

    top_k: int = 0
    filters: Filters = field(default_factory=Filters)
    min_score: float = 0.0
    page_token: str = ""


@dataclass(frozen=True)
class Hit:
    image: ImageRecord
    score: float
    url: str


@dataclass
class Timings:
    encode: float = 0.0
    search: float = 0.0
    merge: float = 0.0
    metadata: float = 0.0
    total: float = 0.0
    rounds: int = 0


@dataclass(frozen=True)
class Page:
    hits: list[Hit]
    next_page_token: str
    partial: bool
    timings: Timings
    model_version: str


StageObserver = Callable[[str, float], None]


class SearchEngine:
    """The gateway's query path over one encoder, one router and the metadata database."""

    def __init__(
        self,
        encoder: Encoder,
        router: Router,
        metadata: ImageReader,
        locator: ImageLocator,
        limits: QueryLimits | None = None,
        observe_stage: StageObserver | None = None,
    ) -> None:
        self.encoder = encoder
        self.router = router
        self.metadata = metadata
        self.locator = locator
        self.limits = limits or QueryLimits.from_settings(Settings.defaults())
        self.observe_stage = observe_stage or (lambda _stage, _s: None)
        self.admission = Admission(self.limits.max_active, self.limits.max_inflight)
        # Asked when a shard refuses a query's model (a generation switch or rollback under way):
        # True when the encoder was swapped for the live generation's. Set by the gateway.
        self.refresh_model: Callable[[], Awaitable[bool]] | None = None
        # Concurrent searches finish their fan-outs together (the router coalesces them), so their
        # metadata lookups arrive together too: one query serves all of them (an idle database
        # runs a lone lookup at once). Each lookup is a round trip and result parsing, which on a
        # CPU shared with the encoder is time taken from the encoder.
        self._lookups: MicroBatcher[tuple[int, ...], dict[int, ImageRecord]] = MicroBatcher(
            self._lookup_many, max_batch=64, max_wait_s=0.0, max_inflight=2, name="metadata lookups"
        )

    async def close(self) -> None:
        await self._lookups.close()
        await self.metadata.close()

    # -- public calls ------------------------------------------------------------------------
    async def search_text(self, text: str, page: PageRequest, deadline_s: float | None = None) -> Page:
        text = text.strip()
        if not text:
            raise InvalidInput("text is empty: say what the images should show")
        if len(text) > self.limits.max_query_chars:
            raise InvalidInput(f"text is {len(text)} characters; at most {self.limits.max_query_chars}")

        async def encode() -> np.ndarray:
            return (await self.encoder.encode_texts([text]))[0]

        return await self._search(("text", text), encode, page, deadline_s)

    async def search_image(
        self, image: bytes | None, image_id: int | None, page: PageRequest, deadline_s: float | None = None
    ) -> Page:
        if image_id is not None:
            exclude = image_id

            async def encode() -> np.ndarray:
                record = await self.get_image_record(image_id)
                return await self._encode_image(await self.locator.read(record))

            return await self._search(("like", image_id), encode, page, deadline_s, exclude=exclude)
        if not image and page.page_token:  # a later page: the token carries the query's vector

            async def unused() -> np.ndarray:
                raise AssertionError("a later page does not encode")

            return await self._search(None, unused, page, deadline_s)
        if not image:
            raise InvalidInput("give an image (its bytes) or the id of an indexed image")
        data = image

        async def encode_bytes() -> np.ndarray:
            return await self._encode_image(data)

        digest = hashlib.sha256(data).digest()  # the token's fingerprint, without repr'ing megabytes
        return await self._search(("image", digest), encode_bytes, page, deadline_s)

    async def get_image_record(self, image_id: int) -> ImageRecord:
        records = await self._lookup([image_id])
        if image_id not in records:
            raise NotFound(f"no indexed image with id {image_id}")
        return records[image_id]

    # -- the path ----------------------------------------------------------------------------
    async def _encode_image(self, data: bytes) -> np.ndarray:
        embeddings = await self.encoder.encode_images([data])
        error = embeddings.errors[0]
        if error is not None:
            raise ImageError(f"image: {error}")
        return embeddings.vectors[0]

    async def _search(
        self,
        query: tuple[str, object] | None,
        encode: Callable[[], Awaitable[np.ndarray]],
        page: PageRequest,
        deadline_s: float | None,
        exclude: int | None = None,
    ) -> Page:
        top_k = page.top_k or self.limits.default_top_k
        if not 0 < top_k <= self.limits.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {self.limits.max_top_k}; got {page.top_k}")
        loop = asyncio.get_running_loop()
        budget = min(deadline_s or self.limits.deadline_s, self.limits.deadline_s)
        deadline = loop.time() + budget
        async with self.admission.slot(deadline):
            for attempt in range(_MODEL_RETRIES + 1):
                try:
                    return await self._attempt(query, encode, page, top_k, deadline, exclude)
                except ManifestMismatch:
                    # a switch between models under way: the shards and this gateway's encoder
                    # disagree for a moment; a page of the other model's result set cannot go on
                    if page.page_token:
                        raise InvalidInput(
                            "page_token belongs to a result set of another model: the index switched "
                            "models since the first page; search again"
                        ) from None
                    if attempt == _MODEL_RETRIES:
                        raise
                    changed = self.refresh_model is not None and await self.refresh_model()
                    remaining = deadline - loop.time()
                    await asyncio.sleep(0 if changed else min(0.1 * (attempt + 1), max(remaining, 0)))
            raise AssertionError("unreachable")

    async def _attempt(
        self,
        query: tuple[str, object] | None,
        encode: Callable[[], Awaitable[np.ndarray]],
        page: PageRequest,
        top_k: int,
        deadline: float,
        exclude: int | None,
    ) -> Page:
        started = time.perf_counter()
        timings = Timings()
        model = self.encoder.model_version
        fp = fingerprint(query, top_k, page.filters, round(page.min_score, 6))
        if page.page_token:
            token = decode_token(
                page.page_token,
                self.limits.token_secrets,
                fingerprint=fp,
                model_version=model,
                dim=self.encoder.embedding_dim,
                any_query=query is None,
            )
        else:
            vector = await self._timed(timings, "encode", encode(), deadline)
            token = PageToken(fp, model, time.time(), float("inf"), -1, 0, vector)
        result = await self._page(token, top_k, page, timings, deadline, exclude)
        timings.total = time.perf_counter() - started
        for stage in ("encode", "search", "merge", "metadata"):
            if stage != "encode" or not page.page_token:
                self.observe_stage(stage, getattr(timings, stage))
        return result

    async def _page(
        self,
        token: PageToken,
        top_k: int,
        page: PageRequest,
        timings: Timings,
        deadline: float,
        exclude: int | None,
    ) -> Page:
        filtered = not page.filters.empty or exclude is not None
        want = token.served + top_k + (1 if exclude is not None else 0)
        k = min(self.limits.max_candidates, int(want * (self.limits.oversample if filtered else 1)))
        cursor = (token.after_score, token.after_id)  # candidates strictly after this are new
        hits: list[Hit] = []
        partial = more = False
        while True:
            timings.rounds += 1
            try:
                found = await self._timed(
                    timings,
                    "search",
                    self.router.search(
                        token.vector[None, :],
                        SearchParams(k=k, nprobe=self.limits.nprobe, ef_search=self.limits.ef_search),
                        deadline_s=self._router_budget(deadline),
                        model_version=token.model_version,
                    ),
                    deadline,
                )
            except Unavailable as exc:
                if self._router_budget(deadline) < self.router.deadline_s:
                    # the shards were given only what was left of the request's time: its deadline,
                    # not the shards, is why none answered
                    raise DeadlineExceeded(
                        f"the search ran out of time waiting for the shards ({exc})"
                    ) from exc
                raise
            partial = partial or found.partial
            scores, ids = found.scores[0], found.ids[0]
            valid = ids >= 0
            exhausted = int(valid.sum()) < k
            t0 = time.perf_counter()
            fresh = _after(scores[valid], ids[valid], cursor)
            below = fresh[0] < page.min_score if page.min_score else np.zeros(len(fresh[0]), bool)
            candidates = list(zip(fresh[0][~below].tolist(), fresh[1][~below].tolist(), strict=True))
            self._observe(timings, "merge", time.perf_counter() - t0)
            records = await self._timed(
                timings, "metadata", self._lookup([i for _, i in candidates]), deadline
            )
            t0 = time.perf_counter()
            for position, (score, image_id) in enumerate(candidates):
                cursor = (score, image_id)
                image = records.get(image_id)
                if image is None or image_id == exclude or not self._visible(image, token, page.filters):
                    continue
                hits.append(Hit(image, score, ""))
                if len(hits) == top_k:
                    more = position + 1 < len(candidates) or (not exhausted and not below.any())
                    break
            self._observe(timings, "merge", time.perf_counter() - t0)
            if len(hits) == top_k or exhausted or below.any() or k >= self.limits.max_candidates:
                break
            k = min(self.limits.max_candidates, k * _GROWTH)
        hits = [Hit(h.image, h.score, self.locator.url(h.image)) for h in hits]
        next_token = ""
        if more and hits:
            last = hits[-1]
            next_token = encode_token(
                PageToken(
                    token.fingerprint,
                    token.model_version,
                    token.as_of,
                    last.score,
                    last.image.image_id,
                    token.served + len(hits),
                    token.vector,
                ),
                self.limits.token_secrets[0],
            )
        return Page(hits, next_token, partial, timings, token.model_version)

    def _router_budget(self, deadline: float) -> float:
        """The router's own deadline (a silent shard is left out after it, flagged partial), kept a
        little inside the request's so a slow shard yields a partial answer, not a timeout."""
        remaining = deadline - asyncio.get_running_loop().time()
        return max(min(self.router.deadline_s, remaining - 0.05), 0.001)

    @staticmethod
    def _visible(image: ImageRecord, token: PageToken, filters: Filters) -> bool:
        if image.indexed is not None and image.indexed.timestamp() > token.as_of:
            return False  # indexed after the first page: not part of this result set
        return filters.matches(image)

    async def _lookup(self, ids: list[int]) -> dict[int, ImageRecord]:
        if not ids:
            return {}
        (records,) = await self._lookups.submit([tuple(ids)])
        return records

    async def _lookup_many(self, batches: list[tuple[int, ...]]) -> list[dict[int, ImageRecord]]:
        found = await self.metadata.get({i for ids in batches for i in ids})
        return [{i: found[i] for i in ids if i in found} for ids in batches]

    async def _timed(self, timings: Timings, stage: str, call: Awaitable[T], deadline: float) -> T:
        remaining = deadline - asyncio.get_running_loop().time()
        started = time.perf_counter()
        try:
            if remaining <= 0:
                if asyncio.iscoroutine(call):
                    call.close()
                raise TimeoutError
            return await asyncio.wait_for(call, timeout=remaining)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"the search ran out of time in its {stage} stage") from exc
        finally:
            self._observe(timings, stage, time.perf_counter() - started)

    @staticmethod
    def _observe(timings: Timings, stage: str, seconds: float) -> None:
        setattr(timings, stage, getattr(timings, stage) + seconds)


def _after(scores: np.ndarray, ids: np.ndarray, cursor: tuple[float, int]) -> tuple[np.ndarray, np.ndarray]:
    """The candidates strictly after ``cursor`` in the ranking order (score desc, id asc)."""
    score, image_id = cursor
    keep = (scores < np.float32(score)) | ((scores == np.float32(score)) & (ids > image_id))
    if score == float("inf"):
        keep[:] = True
    return scores[keep], ids[keep]
