"""The model manifest: the single source of truth for what the encoders take and return.

``mediasearch export`` writes ``<repository>/<name>.manifest.json`` next to the Triton models; every
service reads it (dimensions, tokenizer, image contract, tensor specs, version) and nothing
hard-codes those facts. The version is a content hash of the exported graphs, the tokenizer and the
preprocessing, so a model change is always visible (segments record it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mediasearch.errors import ModelError, NotFound
from mediasearch.preprocess.image import ImageSpec

MANIFEST_SUFFIX = ".manifest.json"
TOKENIZER_SUFFIX = ".tokenizer.json"
FORMAT_VERSION = 1
# Triton config parameters written by export and read by serving code (version check, padding).
VERSION_PARAMETER = "mediasearch_version"
PAD_ID_PARAMETER = "pad_id"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor, without the batch axis (Triton's ``dims``); -1 is dynamic."""

    name: str
    dtype: str  # Triton data type without the TYPE_ prefix: INT64, UINT8, FP32
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ServingSpec:
    """One Triton model: its tensors and its batching, shared by every config flavour."""

    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.outputs[0]


@dataclass(frozen=True)
class ModelManifest:
    """Everything a service needs to know about the exported model."""

    name: str
    version: str
    source: str
    embedding_dim: int
    context_length: int
    pad_id: int
    image: ImageSpec
    text: ServingSpec
    vision: ServingSpec
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    # The optional GPU-decode flavour (`mediasearch export --dali`): a Triton ensemble that takes
    # encoded image bytes (DALI decode + resize + crop, then the vision tower). None: not exported.
    vision_bytes: ServingSpec | None = None
    format_version: int = FORMAT_VERSION

    # -- locations -------------------------------------------------------------------------
    @staticmethod
    def path_in(repository: Path, name: str) -> Path:
        return Path(repository) / f"{name}{MANIFEST_SUFFIX}"

    def tokenizer_path(self, repository: Path) -> Path:
        return Path(repository) / f"{self.name}{TOKENIZER_SUFFIX}"

    def onnx_path(self, repository: Path, spec: ServingSpec) -> Path:
        return Path(repository) / spec.model / "1" / "model.onnx"

    # -- (de)serialisation -----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelManifest:
        if raw.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"model manifest format {raw.get('format_version')!r} is not {FORMAT_VERSION}; re-run "
                "`mediasearch export`"
            )
        img = raw["image"]
        return cls(
            name=raw["name"],
            version=raw["version"],
            source=raw["source"],
            embedding_dim=int(raw["embedding_dim"]),
            context_length=int(raw["context_length"]),
            pad_id=int(raw["pad_id"]),
            image=ImageSpec(
                resize=int(img["resize"]),
                crop=int(img["crop"]),
                mean=tuple(img["mean"]),
                std=tuple(img["std"]),
            ),
            text=_serving_from_dict(raw["text"]),
            vision=_serving_from_dict(raw["vision"]),
            files=dict(raw.get("files", {})),
            vision_bytes=_serving_from_dict(raw["vision_bytes"]) if raw.get("vision_bytes") else None,
        )

    @classmethod
    def load(cls, repository: str | Path, name: str = "clip") -> ModelManifest:
        path = cls.path_in(Path(repository), name)
        if not path.is_file():
            raise NotFound(
                f"no model manifest at {path}; export a model first: "
                f"`mediasearch export --model <hf-id|dir> --out {repository} --name {name}`"
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model manifest {path} is malformed: {exc!r}") from exc


def _serving_from_dict(raw: dict[str, Any]) -> ServingSpec:
    def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

    return ServingSpec(
        model=raw["model"],
        inputs=tensors(raw["inputs"]),
        outputs=tensors(raw["outputs"]),
        max_batch_size=int(raw["max_batch_size"]),
        preferred_batch_sizes=tuple(raw["preferred_batch_sizes"]),
        max_queue_delay_us=int(raw["max_queue_delay_us"]),
    )


def pull_model_files(source: str, name: str, out: Path, *, endpoint_url: str | None = None) -> ModelManifest:
    """Copy what services read of a model repository (the manifest and the tokenizer, not the
    graphs: Triton serves those) from ``s3://bucket/prefix`` or a folder into ``out``; the manifest
    is checked and goes last, so ``out`` never holds a manifest without its tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = (f"{name}{TOKENIZER_SUFFIX}", f"{name}{MANIFEST_SUFFIX}")
    if source.startswith("s3://"):
        from mediasearch import aws

        bucket, _, prefix = source[len("s3://") :].partition("/")
        client = aws.client("s3", endpoint_url=endpoint_url)
        for filename in files:
            key = "/".join(p for p in (prefix.strip("/"), filename) if p)
            with aws.translated(f"downloading s3://{bucket}/{key}"):
                client.download_file(bucket, key, str(out / f".{filename}.part"))
            (out / f".{filename}.part").replace(out / filename)
    else:
        for filename in files:
            path = Path(source) / filename
            if not path.is_file():
                raise NotFound(f"{path} does not exist; export a model into {source} first")
            (out / filename).write_bytes(path.read_bytes())
    manifest = ModelManifest.load(out, name)
    if not manifest.tokenizer_path(out).is_file():
        raise ModelError(f"{source} has no {files[0]}")
    return manifest
