"""The ingestion path: S3 events (SQS), bucket backfill and local folders -> the vector index.

A pipeline of small stages composed by one runner (:mod:`mediasearch.indexer.runner`)::

    source -> fetch -> decode + preprocess -> batch encode -> group by shard -> write segments
           -> ONE transaction (image rows + segment manifest + tombstones) -> acknowledge

Modules: ``events`` (S3 event parsing), ``source`` (the source interface and a fake), ``sqs``,
``backfill``, ``folder`` (the three real sources), ``fetch`` (S3 / file), ``commit`` (reserve ids,
stage segments, publish: the exactly-once logic), ``runner`` (queues, backpressure), ``service``
(settings -> a run), ``worker`` (the long-running SQS consumer), ``progress`` (stderr bar).

Re-exported API:
"""

from mediasearch.indexer.backfill import abackfill, backfill
from mediasearch.indexer.events import ObjectEvent, parse_message
from mediasearch.indexer.folder import aindex_folder, index_folder
from mediasearch.indexer.items import IndexReport
from mediasearch.indexer.progress import ProgressBar
from mediasearch.indexer.runner import Pipeline, PipelineOptions
from mediasearch.indexer.worker import arun_worker, run_worker

__all__ = [
    "IndexReport",
    "ObjectEvent",
    "Pipeline",
    "PipelineOptions",
    "ProgressBar",
    "abackfill",
    "aindex_folder",
    "arun_worker",
    "backfill",
    "index_folder",
    "parse_message",
    "run_worker",
]
