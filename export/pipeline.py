"""``mediasearch export``: checkpoint -> ONNX towers -> parity gate -> Triton model repository."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mediasearch.errors import ConfigError
from mediasearch.export import towers
from mediasearch.export.checkpoint import load_checkpoint
from mediasearch.export.dali import bytes_specs, write_bytes_models
from mediasearch.export.publish import publish, sha256_file, staging
from mediasearch.export.triton_config import CPU_MODEL_PY, Flavour, model_config, render
from mediasearch.model_manifest import (
    MANIFEST_SUFFIX,
    TOKENIZER_SUFFIX,
    ModelManifest,
    ServingSpec,
    TensorSpec,
)
from mediasearch.preprocess.text import TextTokenizer

log = logging.getLogger(__name__)

TEXT_MAX_BATCH, VISION_MAX_BATCH = 64, 32


@dataclass(frozen=True)
class ExportReport:
    manifest: ModelManifest
    parity: towers.ParityReport
    seconds: float
    text_onnx_bytes: int
    vision_onnx_bytes: int


def serving_specs(name: str, dim: int, crop: int) -> tuple[ServingSpec, ServingSpec]:
    """The tensor specs of the two Triton models: the one source of every config flavour."""
    text = ServingSpec(
        model=f"{name}_text",
        inputs=(TensorSpec(towers.TEXT_INPUT, "INT64", (-1,)),),
        outputs=(TensorSpec(towers.OUTPUT, "FP32", (dim,)),),
        max_batch_size=TEXT_MAX_BATCH,
        preferred_batch_sizes=(8, 16, 32),
        max_queue_delay_us=2000,
    )
    vision = ServingSpec(
        model=f"{name}_vision",
        inputs=(TensorSpec(towers.VISION_INPUT, "UINT8", (crop, crop, 3)),),
        outputs=(TensorSpec(towers.OUTPUT, "FP32", (dim,)),),
        max_batch_size=VISION_MAX_BATCH,
        preferred_batch_sizes=(8, 16, 32),
        max_queue_delay_us=5000,
    )
    return text, vision


def export_model(
    source: str, out: str | Path = "model_repository", name: str = "clip", *, dali: bool = False
) -> ExportReport:
    """Export ``source`` (local CLIP directory or Hugging Face id) into the model repository ``out``.

    ``dali``: also the GPU-decode flavour (:mod:`mediasearch.export.dali`); without it, the models
    of an earlier ``dali`` export are taken out of the repository once the new manifest is in.
    """
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"model name {name!r} must be letters, digits, '-' or '_'")
    started = time.perf_counter()
    repository = Path(out)
    ckpt = load_checkpoint(source)
    with staging(repository) as stage:
        tok_path = stage / f"{name}{TOKENIZER_SUFFIX}"
        tok_path.write_text(ckpt.tokenizer_json)
        tokenizer = TextTokenizer.from_file(tok_path, ckpt.context_length, pad_id=0)
        pad_id = tokenizer.eos_id  # CLIP pads with its end token; never seen past the end token
        _check_pooling(ckpt.model, tokenizer)

        log.info("exporting ONNX towers of %s", ckpt.source)
        text_onnx, vision_onnx = towers.export_onnx(ckpt.model, ckpt.image, stage)
        parity = towers.check_parity(
            ckpt.model,
            ckpt.image,
            text_onnx,
            vision_onnx,
            pad_id=pad_id,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            context_length=ckpt.context_length,
        )
        dim = int(ckpt.model.config.projection_dim)  # type: ignore[attr-defined]
        text_spec, vision_spec = serving_specs(name, dim, ckpt.image.crop)

        files = {p.name: sha256_file(p) for p in (text_onnx, vision_onnx, tok_path)}
        identity = json.dumps(
            {"files": files, "image": asdict(ckpt.image), "ctx": ckpt.context_length}, sort_keys=True
        )
        version = f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        for spec, onnx_file in ((text_spec, text_onnx), (vision_spec, vision_onnx)):
            _write_model_dir(stage / spec.model, spec, onnx_file, version=version, pad_id=pad_id)
        bytes_spec: ServingSpec | None = None
        bytes_files: dict[str, str] = {}
        if dali:
            bytes_spec, bytes_files = write_bytes_models(
                stage, name, vision_spec, ckpt.image, version=version
            )
        bytes_models = [s.model for s in bytes_specs(name, vision_spec)]

        manifest = ModelManifest(
            name=name,
            version=version,
            source=ckpt.source,
            embedding_dim=dim,
            context_length=ckpt.context_length,
            pad_id=pad_id,
            image=ckpt.image,
            text=text_spec,
            vision=vision_spec,
            files={
                f"{text_spec.model}/1/model.onnx": files[text_onnx.name],
                f"{vision_spec.model}/1/model.onnx": files[vision_onnx.name],
                tok_path.name: files[tok_path.name],
                **bytes_files,
            },
            vision_bytes=bytes_spec,
        )
        (stage / f"{name}{MANIFEST_SUFFIX}").write_text(manifest.to_json())
        text_bytes = (stage / text_spec.model / "1" / "model.onnx").stat().st_size
        vision_bytes = (stage / vision_spec.model / "1" / "model.onnx").stat().st_size
        models = [text_spec.model, vision_spec.model, *(bytes_models if dali else [])]
        publish(
            stage,
            repository,
            [*models, tok_path.name, f"{name}{MANIFEST_SUFFIX}"],
            remove=[] if dali else bytes_models,
        )
    log.info("published %s (%s) into %s", name, version, repository)
    return ExportReport(manifest, parity, time.perf_counter() - started, text_bytes, vision_bytes)


def _write_model_dir(folder: Path, spec: ServingSpec, onnx_file: Path, *, version: str, pad_id: int) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "configs").mkdir()
    shutil.move(onnx_file, folder / "1" / "model.onnx")
    (folder / "1" / "model.py").write_text(CPU_MODEL_PY)
    for flavour in Flavour:
        cfg = model_config(spec, flavour, version=version, pad_id=pad_id)
        (folder / flavour.filename).write_text(render(cfg))


def _check_pooling(model: object, tokenizer: TextTokenizer) -> None:
    """transformers pools at ``argmax(input_ids)`` when the config says eos_token_id == 2 (the
    original OpenAI configs); that only finds the end token when it has the highest id."""
    from mediasearch.errors import NotClipModel

    eos_cfg = model.config.text_config.eos_token_id  # type: ignore[attr-defined]
    vocab = model.config.text_config.vocab_size  # type: ignore[attr-defined]
    if eos_cfg == 2 and tokenizer.eos_id != vocab - 1:
        raise NotClipModel(
            f"the text config uses legacy argmax pooling (eos_token_id=2) but the tokenizer's end token "
            f"{tokenizer.eos_id} is not the highest id ({vocab - 1}); set text_config.eos_token_id"
        )
    if eos_cfg not in (2, tokenizer.eos_id):
        raise NotClipModel(
            f"text_config.eos_token_id={eos_cfg} but the tokenizer ends texts with id {tokenizer.eos_id}"
        )
