"""The text and vision towers as ONNX graphs, and the parity gate against PyTorch.

Contracts (the manifest records them; serving code reads them from there):

- text: ``input_ids`` int64 ``[batch, seq]`` (both dynamic), start/end tokens included, padded
  after the end token to the longest query of the batch -> ``embedding`` float32 ``[batch, dim]``,
  L2-normalised. Padding cannot change an embedding: CLIP's text attention is causal and pools at
  the (first) end token, so positions after it are never seen.
- vision: ``pixels`` uint8 ``[batch, size, size, 3]`` (resized and cropped RGB) -> ``embedding``
  float32 ``[batch, dim]``, L2-normalised. Cast, /255, mean/std and NHWC->NCHW are the graph's first
  nodes: 4x fewer bytes to Triton than float32, and normalisation lives in exactly one place.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mediasearch.errors import ParityError
from mediasearch.preprocess.image import ImageSpec, normalize

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4
TEXT_INPUT, VISION_INPUT, OUTPUT = "input_ids", "pixels", "embedding"


def _towers(model: Any, image: ImageSpec) -> tuple[Any, Any]:
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model, self.proj = model.text_model, model.text_projection

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            pooled = self.text_model(input_ids=input_ids).pooler_output
            emb = self.proj(pooled)
            return emb / emb.norm(dim=-1, keepdim=True)

    class VisionTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_model, self.proj = model.vision_model, model.visual_projection
            self.mean: torch.Tensor
            self.std: torch.Tensor
            self.register_buffer("mean", torch.tensor(image.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(image.std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            x = (x - self.mean) / self.std
            emb = self.proj(self.vision_model(pixel_values=x).pooler_output)
            return emb / emb.norm(dim=-1, keepdim=True)

    return TextTower().eval(), VisionTower().eval()


def export_onnx(model: Any, image: ImageSpec, out_dir: Path) -> tuple[Path, Path]:
    """Write ``text.onnx`` and ``vision.onnx`` into ``out_dir``."""
    import torch

    text, vision = _towers(model, image)
    text_path, vision_path = out_dir / "text.onnx", out_dir / "vision.onnx"
    example_ids = (
        torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 2]], dtype=torch.int64)
        % model.config.text_config.vocab_size
    )
    example_px = torch.zeros((2, image.crop, image.crop, 3), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes about python control flow
        torch.onnx.export(
            text,
            (example_ids,),
            str(text_path),
            input_names=[TEXT_INPUT],
            output_names=[OUTPUT],
            dynamic_axes={TEXT_INPUT: {0: "batch", 1: "seq"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            vision,
            (example_px,),
            str(vision_path),
            input_names=[VISION_INPUT],
            output_names=[OUTPUT],
            dynamic_axes={VISION_INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return text_path, vision_path


@dataclass(frozen=True)
class ParityReport:
    text_max_abs_diff: float
    vision_max_abs_diff: float
    padding_max_abs_diff: float

    @property
    def worst(self) -> float:
        return max(self.text_max_abs_diff, self.vision_max_abs_diff, self.padding_max_abs_diff)


def check_parity(
    model: Any,
    image: ImageSpec,
    text_path: Path,
    vision_path: Path,
    *,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    context_length: int,
    seed: int = 0,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch over several batch sizes and sequence lengths.

    The PyTorch reference takes float pixels normalised by :func:`normalize` (the shared
    preprocessing), so the gate also pins the normalisation folded into the graph. Raises
    :class:`ParityError` above ``tolerance``.
    """
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(seed)
    text_sess = ort.InferenceSession(str(text_path), providers=["CPUExecutionProvider"])
    vision_sess = ort.InferenceSession(str(vision_path), providers=["CPUExecutionProvider"])
    vocab = model.config.text_config.vocab_size
    ordinary = np.array([i for i in range(min(vocab, 4096)) if i not in (pad_id, bos_id, eos_id)])

    def ids(batch: int, seq: int) -> np.ndarray:
        body = rng.choice(ordinary, size=(batch, seq - 2))
        return np.concatenate(
            [np.full((batch, 1), bos_id), body, np.full((batch, 1), eos_id)], axis=1
        ).astype(np.int64)

    text_diff = 0.0
    with torch.no_grad():
        for batch, seq in ((1, 2), (1, context_length), (3, 7), (8, 16), (5, min(33, context_length))):
            x = ids(batch, min(seq, context_length))
            ref = model.get_text_features(input_ids=torch.from_numpy(x))
            ref = getattr(ref, "pooler_output", ref)
            ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
            text_diff = max(text_diff, float(np.abs(text_sess.run(None, {TEXT_INPUT: x})[0] - ref).max()))
        # Padding to the longest query must not change any embedding.
        rows = [ids(1, n)[0] for n in (3, 6, min(12, context_length))]
        padded = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            padded[i, : len(r)] = r
        batch_out = text_sess.run(None, {TEXT_INPUT: padded})[0]
        pad_diff = max(
            float(np.abs(batch_out[i] - text_sess.run(None, {TEXT_INPUT: r[None, :]})[0][0]).max())
            for i, r in enumerate(rows)
        )
        vision_diff = 0.0
        for batch in (1, 4):
            px = rng.integers(0, 256, size=(batch, image.crop, image.crop, 3), dtype=np.uint8)
            ref = model.get_image_features(
                pixel_values=torch.from_numpy(normalize(px, image.mean, image.std))
            )
            ref = getattr(ref, "pooler_output", ref)
            ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
            vision_diff = max(
                vision_diff, float(np.abs(vision_sess.run(None, {VISION_INPUT: px})[0] - ref).max())
            )
    report = ParityReport(text_diff, vision_diff, pad_diff)
    log.info(
        "parity ONNX Runtime vs PyTorch: text max|diff|=%.2e vision max|diff|=%.2e padding max|diff|=%.2e",
        report.text_max_abs_diff,
        report.vision_max_abs_diff,
        report.padding_max_abs_diff,
    )
    if report.worst > tolerance:
        raise ParityError(
            f"exported graphs differ from PyTorch: text {text_diff:.2e}, vision {vision_diff:.2e}, "
            f"padding {pad_diff:.2e} (tolerance {tolerance:.0e}); nothing was published"
        )
    return report
