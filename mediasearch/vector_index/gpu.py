"""Optional GPU search for IVF segments, guarded: CPU is the default and the only tested path here.

HNSW coarse quantizers do not run on GPU, so an IVF-HNSW segment is first rebuilt around a flat
quantizer holding the same centroids and sharing the same inverted lists (no re-training, no
re-assignment: list membership is identical, only the probe selection becomes exact, which can
usually raise recall). That CPU-side conversion is testable without a GPU; the clone is not.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

from mediasearch.errors import ConfigError

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, which has no get_num_gpus)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def with_flat_quantizer(index: faiss.Index) -> faiss.Index:
    """The same IVF index with its coarse quantizer replaced by an exact flat one."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ConfigError("only IVF segments need a flat quantizer for the GPU")
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    clone: Any = faiss.clone_index(ivf)
    old = clone.quantizer
    clone.own_fields = False  # from here Python owns both quantizers
    old.this.own(True)  # the cloned HNSW quantizer is freed when `old` goes away
    clone.quantizer = flat
    clone.referenced_objects = [flat]  # keep the flat quantizer alive as long as the clone
    return clone


def to_gpu(index: faiss.Index, device: int = 0) -> faiss.Index:
    """Clone an IVF segment to GPU ``device``; ConfigError when no GPU is visible."""
    if gpu_count() == 0:
        raise ConfigError("FAISS sees no GPU (faiss-cpu, or no CUDA device); serve on CPU")
    resources = faiss.StandardGpuResources()  # pragma: no cover - needs a GPU
    gpu_index: Any = faiss.index_cpu_to_gpu(resources, device, with_flat_quantizer(index))  # pragma: no cover
    gpu_index.referenced_objects = [resources]  # pragma: no cover - keep resources alive
    log.info("cloned an IVF segment to GPU %d", device)  # pragma: no cover
    return gpu_index  # pragma: no cover


def maybe_to_gpu(index: faiss.Index, enabled: bool) -> faiss.Index:
    """GPU when asked for and possible, the CPU index otherwise (never an error at start-up)."""
    if enabled and gpu_count() > 0 and faiss.try_extract_index_ivf(index) is not None:
        return to_gpu(index)
    return index
