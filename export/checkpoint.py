"""Load a CLIP checkpoint, its tokenizer and its image contract; refuse what is not CLIP."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediasearch.errors import ModelUnavailable, NotClipModel
from mediasearch.preprocess.image import ImageSpec

log = logging.getLogger(__name__)

# The OpenAI CLIP normalisation, used when a checkpoint ships no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Checkpoint:
    model: object  # transformers.CLIPModel, in eval mode
    tokenizer_json: str  # a `tokenizers` serialisation that adds start and end tokens
    image: ImageSpec
    context_length: int
    source: str


def load_checkpoint(source: str) -> Checkpoint:
    """Load ``source`` (a local directory, or a Hugging Face id available here) as CLIP."""
    from transformers import AutoConfig, CLIPModel

    path = Path(source)
    is_dir = path.is_dir()
    if not is_dir and (path.exists() or source.startswith((".", "/", "~"))):
        raise ModelUnavailable(f"{source} is not a directory with a CLIP checkpoint")
    offline = is_dir or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if is_dir:
            raise NotClipModel(f"{source} has no readable config.json: {exc}") from exc
        raise ModelUnavailable(_hub_help(source)) from exc
    if getattr(config, "model_type", None) != "clip":
        raise NotClipModel(
            f"{source} is a {getattr(config, 'model_type', 'unknown')!r} checkpoint, not CLIP; "
            "mediasearch needs a CLIP model (text and vision towers with a shared embedding space)"
        )
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=offline).eval()
    except OSError as exc:
        raise ModelUnavailable(f"cannot load CLIP weights from {source}: {exc}") from exc
    return Checkpoint(
        model=model,
        tokenizer_json=_tokenizer_json(source, offline),
        image=_image_spec(source, config, offline),
        context_length=int(config.text_config.max_position_embeddings),
        source=str(path.resolve()) if is_dir else source,
    )


def _hub_help(source: str) -> str:
    return (
        f"{source!r} is not a local directory and is not in the local Hugging Face cache, and this machine "
        "cannot download it. Either run `make export MODEL=" + source + "` on a machine with access to "
        "the Hugging Face hub and copy its model_repository/ here, or download the checkpoint there "
        "(e.g. `huggingface-cli download " + source + " --local-dir ./clip`) and pass the directory: "
        "`mediasearch export --model ./clip`."
    )


def _tokenizer_json(source: str, offline: bool) -> str:
    path = Path(source) / "tokenizer.json"
    if path.is_file():
        return path.read_text()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise NotClipModel(
            f"{source} has no usable tokenizer (tokenizer.json or vocab.json + merges.txt)"
        ) from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise NotClipModel(f"{source}'s tokenizer has no fast (tokenizers) form")
    return str(backend.to_str())


def _image_spec(source: str, config: object, offline: bool) -> ImageSpec:
    image_size = int(config.vision_config.image_size)  # type: ignore[attr-defined]
    raw: dict[str, Any] = {}
    local = Path(source) / "preprocessor_config.json"
    if local.is_file():
        raw = json.loads(local.read_text())
    elif not Path(source).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            raw = json.loads(
                Path(
                    hf_hub_download(source, "preprocessor_config.json", local_files_only=offline)
                ).read_text()
            )
        except Exception:
            log.info("no preprocessor_config.json for %s; using CLIP's defaults", source)
    size = raw.get("size", {"shortest_edge": image_size})
    crop = raw.get("crop_size", {"height": image_size, "width": image_size})
    resize = size["shortest_edge"] if isinstance(size, dict) else int(size)
    crop_px = crop["height"] if isinstance(crop, dict) else int(crop)
    if int(crop_px) != image_size:
        raise NotClipModel(
            f"{source}: crop size {crop_px} differs from the vision tower's image_size {image_size}"
        )
    if raw.get("resample", 3) != 3:
        raise NotClipModel(
            f"{source}: only bicubic resizing (resample=3) is supported, got {raw.get('resample')}"
        )
    return ImageSpec(
        resize=int(resize),
        crop=int(crop_px),
        mean=_triple(raw.get("image_mean", OPENAI_CLIP_MEAN)),
        std=_triple(raw.get("image_std", OPENAI_CLIP_STD)),
    )


def _triple(values: Any) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b
