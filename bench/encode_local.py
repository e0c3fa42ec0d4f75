"""ONNX Runtime latency of the exported ViT-B/32-shaped towers on this machine.

Exports the model (timed), then measures single-query text latency at 8 tokens and padded to the
full 77-token context (why batches are padded to their longest query, never to 77), single-image
latency and per-image latency at batch 32. Medians over repeated runs after a warm-up.

    make bench-encode-local
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from bench.models import vitb32_repository
from mediasearch.model_manifest import ModelManifest


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    repo, export_s = vitb32_repository(fresh=True)
    m = ModelManifest.load(repo, "clip")
    text = ort.InferenceSession(str(m.onnx_path(repo, m.text)), providers=["CPUExecutionProvider"])
    vision = ort.InferenceSession(str(m.onnx_path(repo, m.vision)), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def ids(n: int) -> np.ndarray:
        body = rng.integers(1000, 40000, size=(1, n - 2))
        return np.concatenate([[[49406]], body, [[49407]]], axis=1).astype(np.int64)

    ids8, ids77 = ids(8), ids(77)
    px1 = rng.integers(0, 256, (1, m.image.crop, m.image.crop, 3), dtype=np.uint8)
    px32 = rng.integers(0, 256, (32, m.image.crop, m.image.crop, 3), dtype=np.uint8)

    text8 = median_ms(lambda: text.run(None, {"input_ids": ids8}), 50)
    text77 = median_ms(lambda: text.run(None, {"input_ids": ids77}), 30)
    image1 = median_ms(lambda: vision.run(None, {"pixels": px1}), 30)
    image32 = median_ms(lambda: vision.run(None, {"pixels": px32}), 5, warmup=1) / 32
    text_mb = m.onnx_path(repo, m.text).stat().st_size / 1e6
    vision_mb = m.onnx_path(repo, m.vision).stat().st_size / 1e6
    print(f"text  b1  8 tokens : {text8:8.2f} ms")
    print(f"text  b1 77 tokens : {text77:8.2f} ms  ({text77 / text8:.1f}x the 8-token cost)")
    print(f"image b1           : {image1:8.2f} ms")
    print(f"image b32 per image: {image32:8.2f} ms")
    print(
        f"encode-local: text_b1_8tok_ms={text8:.2f} text_b1_77tok_ms={text77:.2f} image_b1_ms={image1:.2f} "
        f"image_b32_per_image_ms={image32:.2f} export_s={export_s:.1f} text_onnx_mb={text_mb:.1f} "
        f"vision_onnx_mb={vision_mb:.1f}"
    )


if __name__ == "__main__":
    main()
