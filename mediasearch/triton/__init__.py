"""A local Triton Inference Server for development, tests and benchmarks.

:class:`LocalTriton` starts the real ``tritonserver`` over the model repository on loopback ports and
stops it cleanly; production runs NVIDIA's Triton container instead (see ``helm/``).
"""

from mediasearch.triton.server import LocalTriton, TritonOptions, check_repository, failed_models

__all__ = ["LocalTriton", "TritonOptions", "check_repository", "failed_models"]
