"""In-process encoders: ONNX Runtime over the exported towers, behind asyncio micro-batchers.

The embedded default (a laptop, ``make demo``, a single-process deployment). Concurrent callers'
queries are merged into shared forward passes (:class:`MicroBatcher`); each pass runs in a worker
thread (ONNX Runtime releases the GIL), so the event loop keeps accepting requests meanwhile. Text
batches are cut by token length (:func:`split_by_length`) so short queries are not padded to a long
one. The model files, tokenizer and version all come from the model manifest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from mediasearch.batcher import MicroBatcher
from mediasearch.encoders.base import ExportedModelEncoder, ImageLimits, empty_embeddings
from mediasearch.encoders.text_batches import pad_rows, split_by_length
from mediasearch.errors import ModelError
from mediasearch.model_manifest import ServingSpec
from mediasearch.settings import FromSettings, Settings

T = TypeVar("T")
Vector = NDArray[np.float32]


@dataclass(frozen=True)
class BatchingOptions(FromSettings):
    """Micro-batching of the in-process encoder (see :mod:`mediasearch.batcher`)."""

    max_batch: int
    max_wait_s: float
    pass_cost_tokens: int  # split a text batch where padding costs more than this many token-rows
    max_inflight: int  # passes per tower running at once, each in its own worker thread
    ort_threads: int  # ONNX Runtime intra-op threads per pass; 0: the cores shared by the passes

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchingOptions:
        return cls(
            max_batch=settings.encoder_max_batch,
            max_wait_s=settings.encoder_max_wait_ms / 1000.0,
            pass_cost_tokens=settings.encoder_pass_cost_tokens,
            max_inflight=settings.encoder_max_inflight,
            ort_threads=settings.encoder_ort_threads,
        )

    def threads_per_pass(self) -> int:
        """Two passes with one thread each beat one pass with two threads on small CPUs: no
        synchronisation inside a pass, and one pass computes while the other is being formed."""
        if self.ort_threads > 0:
            return self.ort_threads
        return max(1, (os.cpu_count() or 1) // self.max_inflight)


class LocalEncoder(ExportedModelEncoder):
    """CLIP's towers in ONNX Runtime, in this process."""

    def __init__(
        self,
        repository: str | Path,
        name: str = "clip",
        *,
        batching: BatchingOptions | None = None,
        limits: ImageLimits | None = None,
    ) -> None:
        super().__init__(repository, name, limits)
        self.batching = batching or BatchingOptions.from_settings(Settings.defaults())
        self._pool: ThreadPoolExecutor | None = None
        self._sessions: dict[str, Any] = {}
        self._text: MicroBatcher[list[int], NDArray[np.float32]] | None = None
        self._vision: MicroBatcher[NDArray[np.uint8], NDArray[np.float32]] | None = None

    async def start(self) -> None:
        await super().start()
        if self._text is not None:
            return
        loop = asyncio.get_running_loop()
        # Loading the graphs takes a while for real models: do it off the event loop.
        try:
            text_sess, vision_sess = await asyncio.gather(
                loop.run_in_executor(None, self._load, self.manifest.text),
                loop.run_in_executor(None, self._load, self.manifest.vision),
            )
        except BaseException:
            await self.close()
            raise
        self._sessions = {"text": text_sess, "vision": vision_sess}
        b = self.batching
        self._pool = ThreadPoolExecutor(max_workers=2 * b.max_inflight, thread_name_prefix="onnxruntime")
        self._text = MicroBatcher(
            self._text_pass,
            max_batch=min(b.max_batch, self.manifest.text.max_batch_size),
            max_wait_s=b.max_wait_s,
            max_inflight=b.max_inflight,
            split=lambda rows: split_by_length([len(r) for r in rows], b.pass_cost_tokens),
            name="local text encoder",
        )
        self._vision = MicroBatcher(
            self._vision_pass,
            max_batch=min(b.max_batch, self.manifest.vision.max_batch_size),
            max_wait_s=b.max_wait_s,
            max_inflight=b.max_inflight,
            name="local vision encoder",
        )

    async def close(self) -> None:
        for batcher in (self._text, self._vision):
            if batcher is not None:
                await batcher.close()
        self._text = self._vision = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # a pass still running finishes on its own
            self._pool = None
        self._sessions = {}
        await super().close()

    async def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return empty_embeddings(self.embedding_dim)
        rows = [self.tokenizer.encode(t) for t in texts]  # InvalidInput before anything is queued
        return np.stack(await self._started(self._text).submit(rows))

    async def encode_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        if len(pixels) == 0:
            return empty_embeddings(self.embedding_dim)
        return np.stack(await self._started(self._vision).submit(list(pixels)))

    # -- passes (run in the worker pool) ---------------------------------------------------
    async def _text_pass(self, rows: list[list[int]]) -> list[NDArray[np.float32]]:
        ids = pad_rows(rows, max(len(r) for r in rows), self.manifest.pad_id)
        return list(await self._infer("text", self.manifest.text, ids))

    async def _vision_pass(self, images: list[NDArray[np.uint8]]) -> list[NDArray[np.float32]]:
        return list(await self._infer("vision", self.manifest.vision, np.stack(images)))

    async def _infer(self, tower: str, spec: ServingSpec, batch: np.ndarray) -> NDArray[np.float32]:
        session = self._sessions[tower]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _run_session, session, spec, batch)

    def _load(self, spec: ServingSpec) -> Any:
        import onnxruntime as ort

        path = self.manifest.onnx_path(self.repository, spec)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.batching.threads_per_pass()
        try:
            return ort.InferenceSession(
                str(path), options, providers=_providers(ort.get_available_providers())
            )
        except Exception as exc:  # onnxruntime raises its own exception types for missing/bad graphs
            raise ModelError(f"cannot load {path} in ONNX Runtime: {exc}") from exc

    @staticmethod
    def _started(
        batcher: MicroBatcher[T, NDArray[np.float32]] | None,
    ) -> MicroBatcher[T, NDArray[np.float32]]:
        if batcher is None:
            raise RuntimeError("LocalEncoder.start() was not awaited")
        return batcher


def _providers(available: list[str]) -> list[str]:
    """CUDA when this onnxruntime build has it (a GPU node), else the CPU."""
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _run_session(session: Any, spec: ServingSpec, batch: np.ndarray) -> NDArray[np.float32]:
    try:
        out = session.run([spec.output.name], {spec.input.name: batch})[0]
    except Exception as exc:  # an ONNX Runtime failure is the model's, never one input's
        raise ModelError(f"{spec.model}: ONNX Runtime failed on a batch of {len(batch)}: {exc}") from exc
    return np.asarray(out, dtype=np.float32)
