"""The micro CLIP's shape, and the checkpoint folder it is saved as.

The folder has what any downloaded CLIP checkpoint has, so the generic exporter treats both alike:
``config.json`` + ``model.safetensors`` (``save_pretrained``), ``tokenizer.json`` and
``preprocessor_config.json`` (the image contract: bicubic resize, centre crop, mean and std).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from mediasearch.export.micro.tokenizer import BOS, EOS, token_id
from mediasearch.preprocess.image import ImageSpec

if TYPE_CHECKING:
    from transformers import CLIPModel

IMAGE_SIZE = 64
PATCH_SIZE = 8
CONTEXT_LENGTH = 32
PROJECTION_DIM = 64
# OpenAI CLIP's normalisation: the exporter's default, and as good as any for these scenes.
IMAGE_SPEC = ImageSpec(
    resize=IMAGE_SIZE,
    crop=IMAGE_SIZE,
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
)
_TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4)
_VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4)


def build_model(tokenizer: Tokenizer) -> CLIPModel:
    """A freshly initialised micro CLIP for ``tokenizer`` (seed torch first for reproducibility)."""
    from transformers import CLIPConfig, CLIPModel

    eos = token_id(tokenizer, EOS)
    config = CLIPConfig(
        text_config=dict(
            _TEXT,
            vocab_size=tokenizer.get_vocab_size(),
            max_position_embeddings=CONTEXT_LENGTH,
            bos_token_id=token_id(tokenizer, BOS),
            eos_token_id=eos,  # pooling at the first end token (any id but the legacy 2)
            pad_token_id=eos,
            projection_dim=PROJECTION_DIM,
        ),
        vision_config=dict(
            _VISION, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=PROJECTION_DIM
        ),
        projection_dim=PROJECTION_DIM,
    )
    return CLIPModel(config)


def save_checkpoint(model: CLIPModel, tokenizer: Tokenizer, folder: Path) -> None:
    """Write the checkpoint folder: weights, config, tokenizer and image contract."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save(str(folder / "tokenizer.json"))
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SPEC.resize},
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SPEC.crop, "width": IMAGE_SPEC.crop},
        "resample": 3,
        "do_normalize": True,
        "image_mean": list(IMAGE_SPEC.mean),
        "image_std": list(IMAGE_SPEC.std),
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
