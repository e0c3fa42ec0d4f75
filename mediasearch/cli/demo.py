"""``mediasearch demo``: the furthest end-to-end path that runs on one machine with no servers.

Today: export the offline micro CLIP, draw a small gallery of labelled scenes, encode sentences and
images through the exported ONNX graphs (the embedded :class:`LocalEncoder`, the same preprocessing
every service uses) and print the text x image similarity table with the best match per sentence.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "export" / "micro" / "model"

# (sentence, the scene drawn for it): each sentence has exactly one matching scene in the gallery.
SCENES: tuple[tuple[str, dict[str, object]], ...] = (
    (
        "a red circle",
        dict(colour="red", shape="circle", count=1, size="large", background="white", position="middle"),
    ),
    (
        "two blue squares",
        dict(colour="blue", shape="square", count=2, size="small", background="beige", position=None),
    ),
    (
        "three yellow stars",
        dict(colour="yellow", shape="star", count=3, size="small", background="black", position=None),
    ),
    (
        "a green triangle",
        dict(colour="green", shape="triangle", count=1, size="large", background="gray", position="left"),
    ),
    (
        "two orange circles",
        dict(colour="orange", shape="circle", count=2, size="large", background="black", position=None),
    ),
    (
        "a purple square",
        dict(colour="purple", shape="square", count=1, size="large", background="white", position="right"),
    ),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="export the offline model and show it matching sentences to pictures (no servers)",
        description=(
            "Export the offline micro CLIP (or --model) into the model repository, draw a gallery of "
            "labelled scenes, and print how similar each sentence is to each picture, through the "
            "exported ONNX graphs and the shared preprocessing."
        ),
    )
    p.add_argument(
        "--model",
        default=None,
        help="CLIP checkpoint folder (default: the micro model in export/micro/model; a seeded tiny "
        "random CLIP while that is absent)",
    )
    p.add_argument("--repository", default="model_repository", help="model repository (default: %(default)s)")
    p.add_argument("--out", default="demo-output", help="where the gallery is written (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="seed of the drawn scenes (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from export import export_model
    from mediasearch.errors import NotFound

    console = Console()
    model = args.model or _default_model(Path(args.out))
    if not Path(model).is_dir():
        raise NotFound(f"no model at {model}; pass --model with a CLIP checkpoint folder")
    with console.status("exporting the model to ONNX (parity-checked against PyTorch)..."):
        report = export_model(str(model), args.repository, "clip")
    console.print(
        f"[bold]model[/] {report.manifest.version} from {report.manifest.source} "
        f"(parity {report.parity.worst:.1e}, {report.seconds:.1f}s) -> {args.repository}/"
    )
    images = _draw_gallery(Path(args.out) / "gallery", args.seed)
    sims = asyncio.run(_similarities(Path(args.repository), [s for s, _ in SCENES], images))
    _print_table(console, sims, images)
    return 0


def _default_model(out: Path) -> Path:
    """The micro model when it is in the checkout; otherwise a seeded tiny random CLIP (noise)."""
    if (DEFAULT_MODEL / "config.json").is_file():
        return DEFAULT_MODEL
    from export.random_clip import save_random_clip

    print(f"note: {DEFAULT_MODEL} is missing; using a seeded tiny random CLIP (its matches are noise)")
    return save_random_clip(out / "tiny-random-clip", "tiny", seed=0)


def _draw_gallery(folder: Path, seed: int) -> list[Path]:
    import json

    from mediasearch.scenes import SceneLabel, encode_scene, render_label, scene_rng

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (sentence, label) in enumerate(SCENES):
        path = folder / f"demo-{i}.png"
        path.write_bytes(encode_scene(render_label(SceneLabel(**label), scene_rng(seed, i), 128), "png"))  # type: ignore[arg-type]
        path.with_suffix(".json").write_text(
            json.dumps({"image": path.name, "label": label, "caption": sentence})
        )
        paths.append(path)
    return paths


async def _similarities(repository: Path, sentences: list[str], images: list[Path]) -> np.ndarray:
    from mediasearch.encoders import LocalEncoder

    async with LocalEncoder(repository) as encoder:
        text = await encoder.encode_texts(sentences)
        pictures = (await encoder.encode_images([p.read_bytes() for p in images])).raise_first()
    return text @ pictures.T


def _print_table(console: object, sims: np.ndarray, images: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    assert isinstance(console, Console)
    table = Table(title="cosine similarity: sentence x picture (best per sentence in bold)")
    table.add_column("sentence")
    for i in range(len(images)):
        table.add_column(f"#{i}", justify="right")
    hits = 0
    for row, (sentence, _) in enumerate(SCENES):
        best = int(np.argmax(sims[row]))
        hits += best == row
        cells = [f"[bold green]{v:.2f}[/]" if j == best else f"{v:.2f}" for j, v in enumerate(sims[row])]
        table.add_row(sentence, *cells)
    console.print(table)
    console.print(f"pictures #0..#{len(images) - 1}: {images[0].parent}/ (#i is drawn for sentence i)")
    console.print(f"[bold]{hits}/{len(SCENES)}[/] sentences picked their own picture")
