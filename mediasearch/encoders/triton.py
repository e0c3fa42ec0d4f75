"""Encoders served by Triton Inference Server, through its gRPC API (``tritonclient.grpc.aio``).

The production path: the gateway and the indexer send tensors; Triton's dynamic batcher merges the
requests of every replica into GPU-sized batches. One gRPC channel is opened at :meth:`start` and
reused by every call. Each encode call has a deadline (``timeout_s``, queueing included), and each
request in it too; ``UNAVAILABLE`` is retried with backoff while the deadline allows.

At start the served models are checked against the manifest this process read (tensor names,
dtypes, dims, ``max_batch_size``, and the ``mediasearch_version`` config parameter), so a gateway can
never encode queries with a different model than the one that encoded the images.

Making text requests batchable. Triton's dynamic batcher only merges requests with identical input
shapes (the ``input_ids`` input does not allow ragged batches), and it closes a batch at the first
queued request whose shape differs. So:

1. rows are padded to a length bucket (a multiple of ``text_bucket`` tokens, see
   :mod:`mediasearch.encoders.text_batches`): every request has one of a few shapes;
2. concurrent queries of this process are coalesced (a micro-batcher: ``max_wait_s``, up to
   ``max_inflight`` batches in flight), sorted by length and cut into a few bucket-padded requests
   (:func:`bucket_groups`). Triton then merges same-shaped requests across gateway replicas.
   Without step 2, interleaved shapes cut Triton's batches to ~1.5 rows on average (measured on
   the CPU flavour with 32 concurrent single-query callers); with it, ~8-12.

Large inputs are split into ``max_batch_size`` chunks that are sent concurrently.

Images as bytes. With a model exported with ``--dali`` and ``image_bytes`` set,
:meth:`TritonEncoder.encode_images` sends JPEG and PNG files as they are to ``<name>_vision_bytes``
(DALI decodes them on Triton's GPU; :mod:`mediasearch.encoders.image_bytes`), one request per image,
and decodes here only the others. Triton fails a whole DALI batch when one file in it is corrupt, so
an image the ensemble refuses is decoded here instead: a corrupt one gets its precise error, its
batch-mates their vectors (from Pillow's pixels).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from numpy.typing import NDArray
from tritonclient.grpc import InferInput, InferRequestedOutput

from mediasearch.batcher import MicroBatcher
from mediasearch.encoders._triton_rpc import call_with_retries, config_differences, mismatch
from mediasearch.encoders.base import ExportedModelEncoder, ImageEmbeddings, ImageLimits, empty_embeddings
from mediasearch.encoders.image_bytes import ImageProbe, bytes_request, probe_image
from mediasearch.encoders.text_batches import bucket_groups, pad_rows
from mediasearch.errors import DeadlineExceeded, ImageError, ModelError, Unavailable
from mediasearch.model_manifest import ServingSpec
from mediasearch.settings import FromSettings, Settings

log = logging.getLogger(__name__)

Vector = NDArray[np.float32]


@dataclass(frozen=True)
class TritonClientOptions(FromSettings):
    """Where Triton is and how to talk to it."""

    url: str
    timeout_s: float  # deadline of one encode call, retries included
    retries: int
    text_bucket: int
    pass_cost_tokens: int  # see text_batches.split_by_length
    client_batching: bool
    max_wait_s: float
    backoff_s: float = 0.05  # first pause before a retry; doubles each time
    max_inflight: int = 2  # coalesced text requests in flight at once
    tls_ca: Path | None = None  # set: gRPC over TLS, Triton's certificate checked against this CA
    image_bytes: bool = False  # send encoded images to <name>_vision_bytes when the manifest has it

    @classmethod
    def from_settings(cls, settings: Settings) -> TritonClientOptions:
        return cls(
            url=settings.triton_grpc_url,
            timeout_s=settings.triton_timeout_s,
            retries=settings.triton_retries,
            text_bucket=settings.triton_text_bucket,
            pass_cost_tokens=settings.encoder_pass_cost_tokens,
            client_batching=settings.triton_client_batching,
            max_wait_s=settings.encoder_max_wait_ms / 1000.0,
            tls_ca=settings.internal_tls_ca,
            image_bytes=settings.triton_image_bytes,
        )


class TritonEncoder(ExportedModelEncoder):
    """CLIP's towers on Triton: ``<name>_text`` and ``<name>_vision`` from the manifest."""

    def __init__(
        self,
        repository: str | Path,
        name: str = "clip",
        *,
        options: TritonClientOptions | None = None,
        limits: ImageLimits | None = None,
    ) -> None:
        super().__init__(repository, name, limits)
        self.options = options or TritonClientOptions.from_settings(Settings.defaults())
        self._client: grpcaio.InferenceServerClient | None = None
        self._text: MicroBatcher[list[int], Vector] | None = None

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def accepts_encoded_images(self) -> bool:
        """Set (``image_bytes``) and exported (the manifest has the ``--dali`` ensemble)."""
        return self.options.image_bytes and self.manifest.vision_bytes is not None

    async def start(self) -> None:
        """Open the channel and check that Triton serves exactly the manifest's models."""
        await super().start()
        if self._client is not None:
            return
        ca = self.options.tls_ca
        self._client = grpcaio.InferenceServerClient(
            self.url, ssl=ca is not None, root_certificates=str(ca) if ca else None
        )
        if self.options.image_bytes and self.manifest.vision_bytes is None:
            log.warning(
                "image bytes are enabled but %s has no bytes ensemble (export with --dali): images "
                "are decoded here",
                self.manifest.version,
            )
        specs = [self.manifest.text, self.manifest.vision]
        if self.accepts_encoded_images and self.manifest.vision_bytes is not None:
            specs.append(self.manifest.vision_bytes)
        try:
            for spec in specs:
                await self._check_model(spec)
        except BaseException:
            await self.close()
            raise
        log.info(
            "Triton at %s serves %s and %s as %s",
            self.url,
            self.manifest.text.model,
            self.manifest.vision.model,
            self.manifest.version,
        )
        if self.options.client_batching:
            self._text = MicroBatcher(
                self._text_rows,
                max_batch=self.manifest.text.max_batch_size,
                max_wait_s=self.options.max_wait_s,
                max_inflight=self.options.max_inflight,
                name=f"triton text client ({self.url})",
            )

    async def close(self) -> None:
        if self._text is not None:
            await self._text.close()
            self._text = None
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        await super().close()

    async def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return empty_embeddings(self.embedding_dim)
        rows = [self.tokenizer.encode(t) for t in texts]  # InvalidInput before anything is sent
        async with self._deadline(f"encoding {len(rows)} texts"):
            vectors = await (self._text.submit(rows) if self._text is not None else self._text_rows(rows))
        return np.stack(vectors)

    async def encode_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        if len(pixels) == 0:
            return empty_embeddings(self.embedding_dim)
        step = self.manifest.vision.max_batch_size
        chunks = [pixels[k : k + step] for k in range(0, len(pixels), step)]
        async with self._deadline(f"encoding {len(pixels)} images"):
            parts = await asyncio.gather(*(self._infer(self.manifest.vision, c) for c in chunks))
        return np.concatenate(parts)

    async def encode_images(self, images: Sequence[bytes]) -> ImageEmbeddings:
        """With the bytes ensemble (:attr:`accepts_encoded_images`): JPEG and PNG files go to Triton
        as they are, the rest is decoded here; otherwise all are decoded here (the base class)."""
        spec = self.manifest.vision_bytes
        if not self.accepts_encoded_images or spec is None:
            return await super().encode_images(images)
        probes = await asyncio.gather(*(self._probe(data) for data in images))
        errors: list[ImageError | None] = [p if isinstance(p, ImageError) else None for p in probes]
        vectors = np.zeros((len(images), self.embedding_dim), dtype=np.float32)
        sent = [i for i, p in enumerate(probes) if isinstance(p, ImageProbe) and p.gpu]
        here = [i for i, p in enumerate(probes) if isinstance(p, ImageProbe) and not p.gpu]
        async with self._deadline(f"encoding {len(sent)} images from their bytes"):
            results = await asyncio.gather(*(self._infer_bytes(spec, images[i]) for i in sent))
        for i, vector in zip(sent, results, strict=True):
            if vector is None:
                here.append(i)
            else:
                vectors[i] = vector
        if here:
            decoded = await super().encode_images([images[i] for i in here])
            for k, i in enumerate(here):
                vectors[i], errors[i] = decoded.vectors[k], decoded.errors[k]
        return ImageEmbeddings(vectors, tuple(errors))

    # -- requests ---------------------------------------------------------------------------
    async def _probe(self, data: bytes) -> ImageProbe | ImageError:
        if self._decode_pool is None:
            raise RuntimeError("TritonEncoder.start() was not awaited")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._decode_pool, probe_image, data, self.limits.decode)
        except ImageError as exc:
            return exc

    async def _infer_bytes(self, spec: ServingSpec, data: bytes) -> Vector | None:
        """One image's embedding from its file, or None when Triton refused it (decode it here)."""
        client = self._connected()
        tensor = bytes_request(spec, data)
        wanted = [InferRequestedOutput(spec.output.name)]

        async def attempt(remaining: float) -> Any:
            return await client.infer(spec.model, [tensor], outputs=wanted, client_timeout=remaining)

        try:
            result = await self._call(attempt, f"infer {spec.model} [1, {len(data)}]")
        except ModelError as exc:
            if type(exc) is not ModelError:  # only the request's own failure, never a mismatch
                raise
            log.info("%s refused an image of %d bytes; decoding it here: %s", spec.model, len(data), exc)
            return None
        return np.asarray(result.as_numpy(spec.output.name), dtype=np.float32)[0]

    async def _text_rows(self, rows: list[list[int]]) -> list[Vector]:
        """Rows cut by length into bucket-padded requests of <= ``max_batch_size`` rows, sent at once."""
        spec = self.manifest.text
        groups = bucket_groups(
            [len(r) for r in rows],
            bucket=self.options.text_bucket,
            context_length=self.manifest.context_length,
            max_batch=spec.max_batch_size,
            pass_cost_tokens=self.options.pass_cost_tokens,
        )
        parts = await asyncio.gather(
            *(
                self._infer(spec, pad_rows([rows[i] for i in idx], width, self.manifest.pad_id))
                for width, idx in groups
            )
        )
        out: list[Vector] = [np.empty(0, np.float32)] * len(rows)
        for (_, idx), part in zip(groups, parts, strict=True):
            for i, vector in zip(idx, part, strict=True):
                out[i] = vector
        return out

    async def _infer(self, spec: ServingSpec, batch: np.ndarray) -> Vector:
        client = self._connected()
        tensor = InferInput(spec.input.name, list(batch.shape), spec.input.dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        wanted = [InferRequestedOutput(spec.output.name)]

        async def attempt(remaining: float) -> Any:
            return await client.infer(spec.model, [tensor], outputs=wanted, client_timeout=remaining)

        result = await self._call(attempt, f"infer {spec.model} [{', '.join(map(str, batch.shape))}]")
        return np.asarray(result.as_numpy(spec.output.name), dtype=np.float32)

    async def _check_model(self, spec: ServingSpec) -> None:
        client = self._connected()

        async def ready(remaining: float) -> bool:
            return bool(await client.is_model_ready(spec.model, client_timeout=remaining))

        async def config(remaining: float) -> Any:
            return await client.get_model_config(spec.model, client_timeout=remaining)

        if not await self._call(ready, f"check {spec.model}"):
            raise Unavailable(f"model {spec.model} is not loaded (not ready) on Triton at {self.url}")
        served = (await self._call(config, f"read the config of {spec.model}")).config
        problems = config_differences(served, spec, self.manifest.version)
        if problems:
            raise mismatch(self.url, spec, problems, str(self.repository))

    async def _call(self, fn: Any, what: str) -> Any:
        o = self.options
        return await call_with_retries(
            fn, url=self.url, what=what, timeout_s=o.timeout_s, retries=o.retries, backoff_s=o.backoff_s
        )

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.options.timeout_s):
                yield
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"Triton at {self.url} did not finish {what} within {self.options.timeout_s:.2f}s"
            ) from exc

    def _connected(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            raise RuntimeError("TritonEncoder.start() was not awaited")
        return self._client
