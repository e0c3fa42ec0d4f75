"""Seeded, random-initialised CLIP checkpoints with the real CLIP tokenizer, written to a folder.

Tests and benchmarks export these exactly like downloaded checkpoints (``save_pretrained`` into a
folder, then ``mediasearch export --model <folder>``). Nothing is downloaded: the BPE vocabulary comes
from the ``open_clip_torch`` wheel (installed with ``--no-deps``; read as a file, never imported).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from mediasearch.errors import ModelUnavailable

VOCAB_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77

SHAPES: dict[str, dict[str, Any]] = {
    # Fast: exact parity checks in seconds.
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    ),
    # ViT-B/32's shapes: the real compute cost of openai/clip-vit-base-patch32.
    "vit-b-32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=512,
    ),
}


def bpe_vocabulary_path() -> Path:
    """The CLIP BPE merges file inside the installed ``open_clip_torch`` distribution."""
    try:
        dist = metadata.distribution("open_clip_torch")
    except metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            "the CLIP BPE vocabulary comes from the open_clip_torch wheel: "
            "`pip install --no-deps open_clip_torch` (its dependencies would pull a CUDA torch)"
        ) from exc
    return Path(str(dist.locate_file(VOCAB_FILE)))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's 49,408-token vocabulary and its merges, built the way OpenAI's tokenizer builds them."""
    lines = gzip.decompress(bpe_vocabulary_path().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path) -> None:
    """Write CLIP's tokenizer (tokenizer.json and its config) into ``folder``."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    pairs: list[Any] = [tuple(m.split()) for m in merges]
    tok = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=CONTEXT_LENGTH)
    tok.save_pretrained(str(folder))


def save_random_clip(folder: str | Path, shape: str = "tiny", seed: int = 0) -> Path:
    """A seeded random CLIP of ``shape`` with CLIP's tokenizer, saved as a checkpoint folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    spec = SHAPES[shape]
    folder = Path(folder)
    vocab, _ = clip_vocab_and_merges()
    config = CLIPConfig(
        text_config=dict(
            spec["text"],
            vocab_size=len(vocab),
            max_position_embeddings=CONTEXT_LENGTH,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=spec["vision"],
        projection_dim=spec["projection_dim"],
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(str(folder))
    write_clip_tokenizer(folder)
    size = spec["vision"]["image_size"]
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": size},
                "do_center_crop": True,
                "crop_size": {"height": size, "width": size},
                "resample": 3,
                "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            },
            indent=2,
        )
    )
    return folder
