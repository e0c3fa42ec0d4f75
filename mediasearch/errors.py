"""The project's one exception tree.

Every error the project raises on purpose derives from :class:`MediaSearchError`. Errors from
libraries (grpc, tritonclient, botocore, sqlalchemy, Pillow, transformers) are translated into this
tree where they enter the project, so callers and the gRPC interceptor only need to know these:

    MediaSearchError
    ├── ConfigError            bad settings or a bad command-line value
    ├── InvalidInput           the caller's input is wrong (maps to INVALID_ARGUMENT)
    │   └── ImageError         an image that cannot be decoded, is truncated, too large, or not an image
    ├── NotFound               an id, file or model that does not exist (NOT_FOUND)
    ├── CorruptData            a stored file fails its checksum or cannot be parsed (DATA_LOSS)
    ├── Conflict               a concurrent writer changed what we were about to change (ABORTED)
    │   └── ModelChanged       the live generation's model is not the one this process encodes with
    ├── ModelError             a model or model repository is unusable
    │   ├── ModelUnavailable   a checkpoint that cannot be loaded here (e.g. a hub id while offline)
    │   ├── NotClipModel       a checkpoint that is not CLIP
    │   ├── ManifestMismatch   a served model differs from the manifest (tensors, version)
    │   └── ParityError        the exported graph does not reproduce the reference model
    ├── Unavailable            an outside system is down or unreachable (UNAVAILABLE)
    ├── DeadlineExceeded       a deadline passed (DEADLINE_EXCEEDED)
    ├── Overloaded             a queue is full or a rate limit is reached; try later (RESOURCE_EXHAUSTED)
    ├── Unauthenticated        no API key, or one the service does not know (UNAUTHENTICATED)
    └── PermissionDenied       a known key without the scope the call needs (PERMISSION_DENIED)
"""

from __future__ import annotations


class MediaSearchError(Exception):
    """Base of every error the project raises on purpose. The message is meant for users."""


class ConfigError(MediaSearchError):
    """Settings or command-line values that cannot work."""


class InvalidInput(MediaSearchError):
    """The caller's input is wrong; retrying the same input will fail again."""


class ImageError(InvalidInput):
    """An image that cannot be used: not an image, truncated, corrupt, or too large."""


class NotFound(MediaSearchError):
    """Something named by the caller does not exist."""


class CorruptData(MediaSearchError):
    """A stored file (segment, index) does not match its recorded checksum or cannot be read."""


class Conflict(MediaSearchError):
    """Another writer changed the state this operation was based on; re-read and retry."""


class ModelChanged(Conflict):
    """The index switched to another model (a generation switch or rollback) since this process
    chose its encoder: its vectors would be compared with another model's. Restart it."""


class ModelError(MediaSearchError):
    """A model, checkpoint or model repository is unusable."""


class ModelUnavailable(ModelError):
    """A checkpoint cannot be loaded on this machine."""


class NotClipModel(ModelError):
    """A checkpoint that is not a CLIP model (no text and vision towers)."""


class ManifestMismatch(ModelError):
    """The model being served does not match the model manifest."""


class ParityError(ModelError):
    """An exported graph does not reproduce the reference implementation within tolerance."""


class Unavailable(MediaSearchError):
    """An outside system (Triton, a shard, the database, S3) is down or unreachable."""


class DeadlineExceeded(MediaSearchError):
    """The request's deadline passed before an answer was ready."""


class Overloaded(MediaSearchError):
    """The service is saturated; the request was rejected rather than queued without bound.
    ``retry_after_s``, when known, says when trying again can succeed (a rate limit's refill)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(MediaSearchError):
    """The caller sent no credential, or one that is unknown or revoked."""


class PermissionDenied(MediaSearchError):
    """The caller is known but its key lacks the scope the call needs."""


__all__ = [
    "ConfigError",
    "Conflict",
    "CorruptData",
    "DeadlineExceeded",
    "ImageError",
    "InvalidInput",
    "ManifestMismatch",
    "MediaSearchError",
    "ModelChanged",
    "ModelError",
    "ModelUnavailable",
    "NotClipModel",
    "NotFound",
    "Overloaded",
    "ParityError",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
]
