"""Export at ViT-B/32's real size (random weights): the parity gate holds at realistic depth."""

from __future__ import annotations

from pathlib import Path

import pytest

from mediasearch.export import export_model
from mediasearch.export.random_clip import save_random_clip


@pytest.mark.slow
def test_vitb32_shaped_export_passes_parity_gate(tmp_path: Path) -> None:
    checkpoint = save_random_clip(tmp_path / "ckpt", "vit-b-32", seed=0)
    report = export_model(str(checkpoint), tmp_path / "model_repository", "clip")
    assert report.manifest.embedding_dim == 512 and report.manifest.image.crop == 224
    assert report.parity.worst <= 1e-4
    assert report.text_onnx_bytes > 100e6 and report.vision_onnx_bytes > 300e6
