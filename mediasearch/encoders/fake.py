"""A model-free encoder for unit tests of the code around encoders (gateway, indexer, batching).

Vectors are deterministic functions of the input (a seeded hash), L2-normalised, so equal inputs get
equal vectors and different inputs almost surely differ. It goes through the same
:class:`MicroBatcher` and image decoding as :class:`LocalEncoder`, with a configurable pass time and
the passes it ran recorded, so tests can watch batching happen without ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mediasearch.batcher import MicroBatcher
from mediasearch.encoders.base import Encoder, ImageLimits, empty_embeddings
from mediasearch.encoders.text_batches import split_by_length
from mediasearch.errors import InvalidInput, ModelError
from mediasearch.preprocess.image import ImageSpec

FAKE_IMAGE_SPEC = ImageSpec(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def fake_vector(data: bytes, dim: int) -> NDArray[np.float32]:
    """A deterministic unit vector for ``data``."""
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEncoder(Encoder):
    """Deterministic vectors through a real micro-batcher; ``passes`` records every forward pass."""

    def __init__(
        self,
        dim: int = 8,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        pass_seconds: float = 0.0,
        pass_cost_tokens: int = 0,
        version: str = "fake-1",
        limits: ImageLimits | None = None,
    ) -> None:
        super().__init__(FAKE_IMAGE_SPEC, limits)
        self.dim, self.pass_seconds, self._version = dim, pass_seconds, version
        self.passes: list[tuple[str, list[int]]] = []  # (tower, token lengths or [0] * images)
        self.fail_next_pass = False
        self._max_batch, self._max_wait_s, self._pass_cost_tokens = max_batch, max_wait_s, pass_cost_tokens
        self._text: MicroBatcher[str, NDArray[np.float32]] | None = None
        self._vision: MicroBatcher[NDArray[np.uint8], NDArray[np.float32]] | None = None

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def embedding_dim(self) -> int:
        return self.dim

    @staticmethod
    def token_length(text: str) -> int:
        """Words plus start and end tokens: the fake's stand-in for a tokenizer."""
        return len(text.split()) + 2

    async def start(self) -> None:
        await super().start()
        if self._text is None:
            cost, batch, wait = self._pass_cost_tokens, self._max_batch, self._max_wait_s
            self._text = MicroBatcher(
                self._text_pass,
                max_batch=batch,
                max_wait_s=wait,
                split=lambda texts: split_by_length([self.token_length(t) for t in texts], cost),
                name="fake text encoder",
            )
            self._vision = MicroBatcher(
                self._vision_pass, max_batch=batch, max_wait_s=wait, name="fake vision encoder"
            )

    async def close(self) -> None:
        for batcher in (self._text, self._vision):
            if batcher is not None:
                await batcher.close()
        self._text = self._vision = None
        await super().close()

    async def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return empty_embeddings(self.dim)
        if any(not t.strip() for t in texts):
            raise InvalidInput("query text is empty")
        if self._text is None:
            raise RuntimeError("FakeEncoder.start() was not awaited")
        return np.stack(await self._text.submit(list(texts)))

    async def encode_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        if len(pixels) == 0:
            return empty_embeddings(self.dim)
        if self._vision is None:
            raise RuntimeError("FakeEncoder.start() was not awaited")
        return np.stack(await self._vision.submit(list(pixels)))

    async def _text_pass(self, texts: list[str]) -> list[NDArray[np.float32]]:
        await self._pass("text", [self.token_length(t) for t in texts])
        return [fake_vector(t.encode(), self.dim) for t in texts]

    async def _vision_pass(self, images: list[NDArray[np.uint8]]) -> list[NDArray[np.float32]]:
        await self._pass("vision", [0] * len(images))
        return [fake_vector(img.tobytes(), self.dim) for img in images]

    async def _pass(self, tower: str, lengths: list[int]) -> None:
        self.passes.append((tower, lengths))
        if self.pass_seconds:
            await asyncio.sleep(self.pass_seconds)
        if self.fail_next_pass:
            self.fail_next_pass = False
            raise ModelError(f"fake {tower} pass failed (injected)")
