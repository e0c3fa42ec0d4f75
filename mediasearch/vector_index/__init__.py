"""Vector index: immutable segments in a store, shards that swap segment lists, a router, and a
compactor. Writers publish segments; readers never wait for them.

Re-exported API:
"""

from mediasearch.vector_index.builder import BuildConfig, build_flat, nlist_for
from mediasearch.vector_index.compactor import CompactionResult, Compactor
from mediasearch.vector_index.follower import GenerationFollower, ManifestFollower
from mediasearch.vector_index.generation import Generation, GenerationRecord, train_generation
from mediasearch.vector_index.merge import merge_topk
from mediasearch.vector_index.partition import (
    DateBucketPartitioner,
    HashPartitioner,
    Partitioner,
    make_partitioner,
)
from mediasearch.vector_index.rebalance import Rebalancer, RebalanceResult
from mediasearch.vector_index.router import (
    GrpcRouter,
    LocalRouter,
    Router,
    RouterResult,
    ShardStatus,
    make_router,
)
from mediasearch.vector_index.segment import SegmentMeta, open_index, write_segment
from mediasearch.vector_index.shard import SearchParams, Shard, ShardStats
from mediasearch.vector_index.store import LocalFolderStore, MemoryStore, SegmentStore, open_store
from mediasearch.vector_index.writer import stage_segment

__all__ = [
    "BuildConfig",
    "CompactionResult",
    "Compactor",
    "DateBucketPartitioner",
    "Generation",
    "GenerationFollower",
    "GenerationRecord",
    "GrpcRouter",
    "HashPartitioner",
    "LocalFolderStore",
    "LocalRouter",
    "ManifestFollower",
    "MemoryStore",
    "Partitioner",
    "RebalanceResult",
    "Rebalancer",
    "Router",
    "RouterResult",
    "SearchParams",
    "SegmentMeta",
    "SegmentStore",
    "Shard",
    "ShardStats",
    "ShardStatus",
    "build_flat",
    "make_partitioner",
    "make_router",
    "merge_topk",
    "nlist_for",
    "open_index",
    "open_store",
    "stage_segment",
    "train_generation",
    "write_segment",
]
