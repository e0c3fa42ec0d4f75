"""Index generations: one coarse quantizer for the whole index, and shards that own its lists.

A generation is trained once, on a sample of every vector the index holds: k-means gives ``nlist``
centroids (the inverted lists), the vector encoding (SQ8 by default) is trained on the same sample,
and the lists are packed into shards by size and by neighbourhood (:func:`pack_regions`: each
shard a region of nearby lists, every shard within 2% of the mean), so shards hold about the same
number of vectors and a query's nearest lists mostly sit on one or two shards. A vector lives in
the list of its nearest centroid, and so in exactly one shard. A query searches the quantizer once
(in the router), takes its ``nprobe`` nearest lists, and only the shards that own one of them scan
anything: the work per query is ``nprobe`` lists whatever the number of shards (FAISS's
``IndexShardsIVF``, SPANN's posting lists routed by centroid).

The generation's artifact is stored in the segment store like a segment (same files, same
checksums, same garbage collection): ``index.faiss`` is the trained, empty index (quantizer +
encoder) every segment of the generation is cloned from, ``ids.npy`` the owning shard of each list
and ``vectors.npy`` the list sizes at training. It is small (nlist x dim floats): every router,
indexer and shard server loads it.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from mediasearch.errors import CorruptData, InvalidInput
from mediasearch.vector_index.builder import BuildConfig, check_vectors, nlist_for
from mediasearch.vector_index.segment import (
    IDS_FILE,
    INDEX_FILE,
    META_FILE,
    VECTORS_FILE,
    SegmentMeta,
    read_meta,
    sha256_file,
)

if TYPE_CHECKING:
    from mediasearch.vector_index.store import SegmentStore

log = logging.getLogger(__name__)
QUANTIZER = "quantizer"  # the index_type of a generation's artifact
_ASSIGN_CHUNK = 65_536


@dataclass(frozen=True)
class GenerationRecord:
    """A row of ``index_generations`` as plain data."""

    number: int
    model_version: str
    nlist: int
    num_shards: int
    quantizer_id: str
    quantizer_uri: str
    vectors: int
    imbalance: float
    state: str = "live"
    dim: int = 0  # the vectors' width (0: not recorded, a generation built before it was)
    created: datetime | None = field(default=None, compare=False)  # set when read from the manifest
    retired: datetime | None = field(default=None, compare=False)
    model_name: str = ""  # its model's name in the model repository ("": the deployment's own)


class Generation:
    """A loaded generation: probe the quantizer, place vectors, route lists to shards. Read-only
    after construction, so any number of threads may use it at once."""

    def __init__(self, number: int, template: faiss.Index, owners: np.ndarray, sizes: np.ndarray) -> None:
        ivf: Any = faiss.extract_index_ivf(template)
        self.number = number
        self.template = template
        self.quantizer: Any = faiss.downcast_index(ivf.quantizer)
        self.nlist = int(ivf.nlist)
        self.dim = int(template.d)
        self.owners = np.ascontiguousarray(owners, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.num_shards = int(self.owners.max()) + 1 if len(self.owners) else 0
        if len(self.owners) != self.nlist or self.quantizer.ntotal != self.nlist:
            raise CorruptData(f"generation {number}: {len(self.owners)} owners for {self.nlist} lists")

    @property
    def factory(self) -> str:
        """What its segments are, for the manifest: e.g. ``IVF4096,SQ8@g1``."""
        return f"{_factory(self.template)}@g{self.number}"

    def probe(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` nearest lists of each query, nearest first: (nq, nprobe) int64. Exact
        (FAISS's flat search, on the caller's OpenMP threads: the gateway sets one, so a probe
        never spins a core the encoder needs; a numpy product was 40% faster for one query but
        its BLAS threads cannot be limited from here)."""
        _, lists = self.quantizer.search(queries, min(nprobe, self.nlist))
        return np.asarray(lists, dtype=np.int64)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The list of each vector (its nearest centroid)."""
        out = np.empty(len(vectors), dtype=np.int64)
        for start in range(0, len(vectors), _ASSIGN_CHUNK):
            chunk = np.ascontiguousarray(vectors[start : start + _ASSIGN_CHUNK], dtype=np.float32)
            out[start : start + len(chunk)] = self.quantizer.search(chunk, 1)[1][:, 0]
        return out

    def route(self, lists: np.ndarray) -> dict[int, np.ndarray]:
        """Per shard that owns at least one of the probed lists, the lists it must scan: the same
        (nq, nprobe) shape, with -1 where another shard owns the list (FAISS skips those)."""
        owner = self.owners[lists]
        shards = set(owner[0].tolist()) if len(owner) == 1 else set(np.unique(owner).tolist())
        return {shard: np.where(owner == shard, lists, -1) for shard in sorted(shards)}

    def empty_index(self) -> faiss.Index:
        """A trained, empty index of this generation, ready for ``add_core`` with placed lists."""
        return faiss.clone_index(self.template)

    def shard_sizes(self) -> np.ndarray:
        return np.bincount(self.owners, weights=self.sizes, minlength=self.num_shards).astype(np.int64)

    def write(self, folder: Path, *, model_version: str, segment_id: str) -> SegmentMeta:
        """The artifact, as a complete segment folder (see the module docstring)."""
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.template, str(folder / INDEX_FILE))
        np.save(folder / IDS_FILE, self.owners)
        np.save(folder / VECTORS_FILE, self.sizes)
        meta = SegmentMeta(
            segment_id=segment_id,
            shard=-1,
            count=self.nlist,
            dim=self.dim,
            model_version=model_version,
            index_type=f"{QUANTIZER}:{self.factory}",
            files={name: sha256_file(folder / name) for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE)},
            created=datetime.now(UTC).isoformat(),
            generation=self.number,
        )
        (folder / META_FILE).write_text(meta.to_json())
        return meta

    @classmethod
    def read(cls, folder: Path) -> Generation:
        meta = read_meta(folder)
        if not meta.index_type.startswith(QUANTIZER):
            raise CorruptData(f"{folder} holds a segment, not a generation's quantizer")
        try:
            template = faiss.read_index(str(folder / INDEX_FILE))
            owners = np.load(folder / IDS_FILE)
            sizes = np.load(folder / VECTORS_FILE)
        except (RuntimeError, OSError, ValueError) as exc:
            raise CorruptData(f"cannot read the quantizer in {folder}: {exc}") from exc
        return cls(meta.generation, template, owners, sizes)


_SQ_NAMES = {
    faiss.ScalarQuantizer.QT_8bit: "SQ8",
    faiss.ScalarQuantizer.QT_4bit: "SQ4",
    faiss.ScalarQuantizer.QT_fp16: "SQfp16",
}


def _factory(index: faiss.Index) -> str:
    ivf: Any = faiss.extract_index_ivf(index)
    concrete: Any = faiss.downcast_index(index)
    if hasattr(concrete, "sq"):
        return f"IVF{ivf.nlist},{_SQ_NAMES.get(concrete.sq.qtype, 'SQ')}"
    if hasattr(concrete, "pq"):
        return f"IVF{ivf.nlist},PQ{concrete.pq.M}"
    return f"IVF{ivf.nlist},Flat"


def plan_nlist(n: int, num_shards: int, config: BuildConfig) -> int:
    """nlist from the sqrt(N) rule, capped so each list gets ``train_per_list`` training vectors,
    and at least a few lists per shard so the packing can balance them."""
    nlist = nlist_for(n, config.nlist_factor)
    while nlist > 1 and nlist * config.train_per_list > n:
        nlist //= 2
    return max(nlist, min(8 * num_shards, max(1, n // 39)))


def balance(sizes: np.ndarray, num_shards: int) -> np.ndarray:
    """Owner shard per list: longest-processing-time packing (largest list onto the lightest
    shard), within 4/3 of optimal and, with thousands of small lists, within a fraction of a
    percent of even."""
    owners = np.empty(len(sizes), dtype=np.int64)
    heap = [(0, shard) for shard in range(num_shards)]
    for lst in np.argsort(-np.asarray(sizes), kind="stable"):
        load, shard = heapq.heappop(heap)
        owners[lst] = shard
        heapq.heappush(heap, (load + int(sizes[lst]), shard))
    return owners


def pack_regions(
    centroids: np.ndarray, sizes: np.ndarray, num_shards: int, *, slack: float = 0.02, seed: int = 1234
) -> np.ndarray:
    """Owner shard per list, neighbouring lists on the same shard and shards within ``slack`` of
    even (SPANN-style: a query's nearest lists are near each other, so it calls one or two shards
    instead of all). Each shard gets a region: a k-means of the centroids, weighted by list size,
    into ``num_shards``. Lists then go, largest first, to the most similar region whose shard
    still has room under (1 + slack) x the mean, else to the lightest shard. Falls back to
    :func:`balance` when there are too few lists per shard to choose from."""
    sizes = np.asarray(sizes, dtype=np.int64)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if num_shards == 1:
        return np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) < 8 * num_shards or sizes.sum() == 0:
        return balance(sizes, num_shards)
    clustering: Any = faiss.Clustering(centroids.shape[1], num_shards)
    clustering.seed = seed
    clustering.spherical = True
    clustering.niter = 25
    clustering.max_points_per_centroid = len(sizes)  # no sub-sampling: every list counts
    clustering.train(centroids, faiss.IndexFlatIP(centroids.shape[1]), weights=sizes.astype(np.float32) + 1)
    regions = faiss.vector_to_array(clustering.centroids).reshape(num_shards, -1)
    preference = np.argsort(-(centroids @ regions.T), axis=1, kind="stable")
    capacity = (1 + slack) * sizes.sum() / num_shards
    owners = np.empty(len(sizes), dtype=np.int64)
    load = np.zeros(num_shards, dtype=np.int64)
    for lst in np.argsort(-sizes, kind="stable"):
        room = [s for s in preference[lst] if load[s] + sizes[lst] <= capacity]
        shard = int(room[0]) if room else int(np.argmin(load))
        owners[lst] = shard
        load[shard] += sizes[lst]
    return owners


def imbalance(per_shard: np.ndarray) -> float:
    """Largest shard / mean shard (1.0 is perfect)."""
    mean = float(np.mean(per_shard)) if len(per_shard) else 0.0
    return float(np.max(per_shard)) / mean if mean > 0 else 1.0


def train_generation(
    vectors: np.ndarray, *, number: int, num_shards: int, config: BuildConfig
) -> tuple[Generation, np.ndarray]:
    """Train generation ``number`` on these (unit) vectors; returns it and each vector's list.

    k-means runs on a sample of ``nlist * train_per_list`` vectors (spherical: centroids are unit
    vectors, as inner-product search wants), the encoder is trained on the same sample, every
    vector is then placed in its nearest list and the lists are packed into ``num_shards``
    regions (:func:`pack_regions`)."""
    if num_shards <= 0:
        raise InvalidInput("a generation needs at least one shard")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n < num_shards * 39:
        raise InvalidInput(f"{n} vectors are too few to train a quantizer for {num_shards} shards")
    nlist = plan_nlist(n, num_shards, config)
    rng = np.random.default_rng(config.seed)
    n_train = min(n, nlist * config.train_per_list)
    sample = vectors[np.sort(rng.choice(n, n_train, replace=False))]
    log.info("generation %d: k-means of %d lists on %d of %d vectors", number, nlist, n_train, n)
    clustering: Any = faiss.Clustering(dim, nlist)
    clustering.seed = config.seed
    clustering.spherical = True
    clustering.niter = 20
    clustering.max_points_per_centroid = config.train_per_list + 1
    clustering.train(sample, faiss.IndexFlatIP(dim))
    centroids = faiss.vector_to_array(clustering.centroids).reshape(nlist, dim)
    template = faiss.index_factory(dim, f"IVF{nlist},{config.encoding}", faiss.METRIC_INNER_PRODUCT)
    ivf: Any = faiss.extract_index_ivf(template)
    ivf.quantizer.add(centroids)
    ivf.by_residual = False  # codes independent of the list: segments are scanned without a quantizer
    template.train(sample)  # the quantizer is complete, so this trains only the encoder
    placeholder = Generation(number, template, np.arange(nlist) % num_shards, np.zeros(nlist))
    lists = placeholder.assign(vectors)
    sizes = np.bincount(lists, minlength=nlist)
    owners = pack_regions(centroids, sizes, num_shards, seed=config.seed)
    generation = Generation(number, template, owners, sizes)
    log.info(
        "generation %d: %d lists over %d shards, imbalance %.3f",
        number, nlist, num_shards, imbalance(generation.shard_sizes()),
    )  # fmt: skip
    return generation, lists


def build_generation_index(
    generation: Generation, vectors: np.ndarray, ids: np.ndarray, lists: np.ndarray | None = None
) -> faiss.Index:
    """A segment's index in ``generation``: the vectors' codes in their lists (placed here unless
    ``lists`` gives them). The quantizer is swapped for an empty one while the caller writes the
    file (segments are searched with the router's lists, never through their own quantizer), so a
    segment of ten vectors does not carry nlist x dim floats."""
    vectors, ids = check_vectors(vectors, ids)
    if vectors.shape[1] != generation.dim:
        raise InvalidInput(f"vector dim {vectors.shape[1]} != generation dim {generation.dim}")
    lists = generation.assign(vectors) if lists is None else np.ascontiguousarray(lists, dtype=np.int64)
    index = generation.empty_index()
    ivf: Any = faiss.extract_index_ivf(index)
    ivf.add_core(len(ids), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    return index


def write_stripped(index: faiss.Index, path: Path) -> None:
    """Write an index of a generation without its quantizer (see ``build_generation_index``)."""
    ivf: Any = faiss.extract_index_ivf(index)
    full = ivf.quantizer
    empty = faiss.IndexFlat(ivf.d, ivf.metric_type)
    ivf.quantizer = empty
    try:
        faiss.write_index(index, str(path))
    finally:
        ivf.quantizer = full  # the index owns (and frees) its own quantizer, never ``empty``


def load_generation(
    store: SegmentStore, record: GenerationRecord, *, verify_checksums: bool = True
) -> Generation:
    """Read a generation's artifact from the store (it is small: read whole, the copy released)."""
    folder = store.open(record.quantizer_uri, verify_checksums=verify_checksums)
    try:
        generation = Generation.read(folder)
    finally:
        store.release(record.quantizer_uri, folder)
    if generation.number != record.number:
        raise CorruptData(f"{record.quantizer_uri} holds generation {generation.number}, not {record.number}")
    return generation
