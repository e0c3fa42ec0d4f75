"""Dual write: while a reindex builds a generation for another model, the indexer encodes each new
image with that model too, and its publishing transaction stages the vector in that generation.

So an image ingested while the reindex runs is in the new generation when it is switched to,
whatever the reindex's own pass had already listed; a removed one is tombstoned there by the
switch (it is no longer indexed). After the switch, the same goes for the generation it retired
while that is kept for a rollback (in the exact layout): a rollback then finds every image there.

:class:`ShadowEncoder` finds that generation (re-read every few seconds), starts an encoder for
its model (its name in the same model repository), checks the version, and keeps it meanwhile.
The same decoded pixels serve both models when their image contracts match; otherwise dual write
is off for that model (said once) and the reindex, run again before the switch, takes the new
images.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from mediasearch.encoders.base import Encoder
from mediasearch.encoders.factory import create_encoder
from mediasearch.errors import MediaSearchError
from mediasearch.metadata.db import translated
from mediasearch.settings import Settings
from mediasearch.vector_index.upgrade import building, kept_generation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shadow:
    number: int  # the building generation, or the one a rollback would return to
    encoder: Encoder
    kept: bool = False  # True: the generation the last model switch retired (kept for a rollback)


class ShadowEncoder:
    """``await current()``: the building generation and its model's encoder, or None."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], primary: Encoder, interval_s: float = 5.0
    ) -> None:
        self.settings, self.sessions, self.primary, self.interval_s = settings, sessions, primary, interval_s
        self._shadow: Shadow | None = None
        self._checked = float("-inf")
        self._refused: set[str] = set()  # model versions said once not to fit
        self._lock = asyncio.Lock()

    async def current(self) -> Shadow | None:
        """The shadow as of a check that *ended* less than ``interval_s`` ago: a batch that asks
        while a check (starting the new model's encoder: seconds) runs waits for its answer, rather
        than going on without dual write and leaving its images out of the generation."""
        if time.monotonic() - self._checked < self.interval_s:
            return self._shadow
        async with self._lock:
            if time.monotonic() - self._checked >= self.interval_s:
                try:
                    await self._refresh()
                except MediaSearchError as exc:  # keep what is held; the next check tries again
                    log.warning("indexer: cannot check for a generation being built: %s", exc)
                finally:
                    self._checked = time.monotonic()
        return self._shadow

    async def _refresh(self) -> None:
        row = await asyncio.to_thread(self._building)
        if row is None or row[1] == self.primary.model_version:
            await self._drop()
            return
        number, version, name, kept = row
        if self._shadow is not None and self._shadow.number == number:
            return
        await self._drop()
        if version in self._refused:
            return
        encoder = create_encoder(self.settings.with_overrides(model_name=name or self.settings.model_name))
        await encoder.start()
        why = ""
        if encoder.model_version != version:
            why = f"the repository's {name or self.settings.model_name} is {encoder.model_version}"
        elif encoder.image_spec != self.primary.image_spec:
            why = "its image contract differs from the live model's (the decoded pixels do not fit)"
        if why:
            await encoder.close()
            self._refused.add(version)
            log.warning(
                "indexer: generation %d is building for model %s, but %s: new images are not written "
                "there; run the reindex again before the switch", number, version, why,
            )  # fmt: skip
            return
        self._shadow = Shadow(number, encoder, kept)
        log.info(
            "indexer: new images also go to generation %d (model %s), %s", number, version,
            "kept for a rollback" if kept else "being built",
        )  # fmt: skip

    def _building(self) -> tuple[int, str, str, bool] | None:
        """The generation being built; else the one a rollback would return to, when it holds its
        vectors in the exact layout (a quantized one would need them placed in its lists)."""
        with translated("reading the generation being built"), self.sessions() as session:
            row = building(session)
            if row is not None:
                return row.number, row.model_version, row.model_name or "", False
            kept = kept_generation(session, self.settings.generation_keep_s)
            if kept is not None and not kept.nlist:
                return kept.number, kept.model_version, kept.model_name or "", True
            return None

    async def _drop(self) -> None:
        if self._shadow is not None:
            shadow, self._shadow = self._shadow, None
            await shadow.encoder.close()

    async def close(self) -> None:
        await self._drop()
