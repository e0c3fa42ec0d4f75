"""Evaluate the micro CLIP: text-to-image precision@10 on a held-out generated gallery.

    python -m mediasearch.export.micro.evaluate [--model export/micro/model] [--onnx]

Renders a gallery from a seed no training run uses, with every colour-shape pair (including the
ones held out of training), encodes it through the serving preprocessing, and scores generated
queries (see :mod:`mediasearch.export.micro.retrieval`) for the trained model and for a randomly initialised
model of the same shape (the floor). With ``--onnx`` the trained model is first exported by
``mediasearch export``'s code and scored through the serving encoder (ONNX Runtime,
:class:`~mediasearch.encoders.LocalEncoder`) instead of PyTorch. The last line printed is the summary::

    micro-eval: p@10=... p@10_unseen_combos=... p@10_random=... images=... queries=...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tokenizers import Tokenizer

from mediasearch.export.checkpoint import load_checkpoint
from mediasearch.export.micro.retrieval import Encoders, EvalQuery, eval_queries, load_gallery, precision_at_k
from mediasearch.export.micro.scenes import write_gallery
from mediasearch.export.micro.train import THREADS
from mediasearch.preprocess.image import ImageSpec, normalize
from mediasearch.preprocess.text import TextTokenizer

EVAL_SEED = 1_000_003  # training seeds are small integers: this gallery shares no scene with them
GALLERY_IMAGES = 4_000
GALLERY_IMAGE_SIZE = 128
K = 10


def torch_encoders(model: Any, tokenizer: TextTokenizer, spec: ImageSpec) -> Encoders:
    """Encoders that run a ``transformers.CLIPModel`` the way the exported towers do."""

    def texts(batch: Sequence[str]) -> NDArray[np.float32]:
        ids = torch.from_numpy(tokenizer.encode_batch(batch))
        with torch.inference_mode():
            pooled = model.text_model(input_ids=ids).pooler_output
            return model.text_projection(pooled).numpy()

    def images(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        x = torch.from_numpy(normalize(pixels, spec.mean, spec.std))
        with torch.inference_mode():
            pooled = model.vision_model(pixel_values=x).pooler_output
            return model.visual_projection(pooled).numpy()

    return Encoders(texts=texts, images=images, image_spec=spec)


def checkpoint_encoders(model_dir: Path, random_seed: int) -> tuple[Encoders, Encoders]:
    """The trained checkpoint's encoders, and those of a random model of the same shape."""
    from transformers import CLIPModel

    ckpt = load_checkpoint(str(model_dir))
    model: Any = ckpt.model
    tokenizer = TextTokenizer(
        Tokenizer.from_str(ckpt.tokenizer_json),
        ckpt.context_length,
        pad_id=int(model.config.text_config.pad_token_id),
    )
    torch.manual_seed(random_seed)
    random_model = CLIPModel(model.config).eval()
    return (
        torch_encoders(model, tokenizer, ckpt.image),
        torch_encoders(random_model, tokenizer, ckpt.image),
    )


@contextlib.contextmanager
def onnx_encoders(model_dir: Path) -> Iterator[Encoders]:
    """The checkpoint exported to a temporary Triton repository and served by ``LocalEncoder``."""
    from mediasearch.encoders.local import LocalEncoder
    from mediasearch.export.pipeline import export_model

    with tempfile.TemporaryDirectory(prefix="micro-eval-repo-") as repo, asyncio.Runner() as runner:
        export_model(str(model_dir), repo)
        encoder = LocalEncoder(repo)
        runner.run(encoder.start())
        try:
            yield Encoders(
                texts=lambda batch: runner.run(encoder.encode_texts(list(batch))),
                images=lambda pixels: runner.run(encoder.encode_pixels(pixels)),
                image_spec=encoder.image_spec,
            )
        finally:
            runner.run(encoder.close())


def summary_line(
    queries: Sequence[EvalQuery], trained: NDArray[np.float64], random: NDArray[np.float64], images: int
) -> str:
    """The one-line result: mean precision@10 overall, on unseen combos, and of the random floor."""
    unseen = np.array([q.unseen_combo for q in queries])
    return (
        f"micro-eval: p@10={trained.mean():.3f} p@10_unseen_combos={trained[unseen].mean():.3f} "
        f"p@10_random={random.mean():.3f} images={images} queries={len(queries)}"
    )


def family_table(queries: Sequence[EvalQuery], trained: NDArray[np.float64]) -> list[str]:
    """One line per query family: how many queries, and their mean precision@10."""
    families = sorted({q.family for q in queries})
    lines = []
    for family in families:
        chosen = np.array([q.family == family for q in queries])
        lines.append(f"  {family:<28} queries={chosen.sum():4d} p@10={trained[chosen].mean():.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mediasearch.export.micro.evaluate",
        description="Text-to-image precision@10 of the micro CLIP on a held-out generated gallery "
        "(with the colour-shape pairs held out of training), against a random-weights floor.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("export/micro/model"),
        help="checkpoint folder (default: %(default)s)",
    )
    parser.add_argument(
        "--images", type=int, default=GALLERY_IMAGES, help="gallery size (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="gallery seed (default: %(default)s)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="score the model exported to ONNX and served by LocalEncoder (the serving path), "
        "not the PyTorch checkpoint",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    trained_encoders, random_encoders = checkpoint_encoders(args.model, random_seed=0)
    with tempfile.TemporaryDirectory(prefix="micro-eval-") as folder:
        write_gallery(folder, args.images, args.seed, GALLERY_IMAGE_SIZE)
        gallery = load_gallery(Path(folder), trained_encoders.image_spec)
    queries = eval_queries(gallery.labels, K)
    with contextlib.ExitStack() as stack:
        if args.onnx:
            trained_encoders = stack.enter_context(onnx_encoders(args.model))
        trained = precision_at_k(trained_encoders, gallery, queries, K)
    random = precision_at_k(random_encoders, gallery, queries, K)
    print("precision@10 by query family:")
    print("\n".join(family_table(queries, trained)))
    print(summary_line(queries, trained, random, len(gallery.labels)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
