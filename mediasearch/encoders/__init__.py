"""Text and image encoders behind one async interface (:class:`Encoder`).

- :class:`TritonEncoder`: Triton Inference Server over gRPC (cluster mode, production).
- :class:`LocalEncoder`: ONNX Runtime in this process with a micro-batcher (embedded mode, default).
- :class:`FakeEncoder`: deterministic vectors, no model, for unit tests of the code around encoders.

:func:`create_encoder` picks one from the settings.
"""

from mediasearch.batcher import MicroBatcher
from mediasearch.encoders.base import Encoder, ExportedModelEncoder, ImageEmbeddings, ImageLimits
from mediasearch.encoders.factory import create_encoder
from mediasearch.encoders.fake import FakeEncoder
from mediasearch.encoders.local import BatchingOptions, LocalEncoder
from mediasearch.encoders.triton import TritonClientOptions, TritonEncoder

__all__ = [
    "BatchingOptions",
    "Encoder",
    "ExportedModelEncoder",
    "FakeEncoder",
    "ImageEmbeddings",
    "ImageLimits",
    "LocalEncoder",
    "MicroBatcher",
    "TritonClientOptions",
    "TritonEncoder",
    "create_encoder",
]
