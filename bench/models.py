"""Models shared by the benchmarks: a ViT-B/32-shaped random CLIP, exported once under build/."""

from __future__ import annotations

import time
from pathlib import Path

BUILD = Path(__file__).resolve().parent.parent / "build" / "bench"


def vitb32_repository(*, fresh: bool = False) -> tuple[Path, float | None]:
    """The exported ViT-B/32-shaped model repository, and the export time when it was (re)built now.

    Random weights cost exactly what openai/clip-vit-base-patch32 costs to run (same shapes).
    """
    from mediasearch.export import export_model
    from mediasearch.export.random_clip import save_random_clip
    from mediasearch.model_manifest import ModelManifest

    repo = BUILD / "model_repository"
    if not fresh and ModelManifest.path_in(repo, "clip").is_file():
        return repo, None
    checkpoint = save_random_clip(BUILD / "vit-b-32-random", "vit-b-32", seed=0)
    started = time.perf_counter()
    export_model(str(checkpoint), repo, "clip")
    return repo, time.perf_counter() - started
