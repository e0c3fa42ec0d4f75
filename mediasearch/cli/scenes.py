"""``mediasearch scenes``: write a gallery of generated scenes (images + JSON sidecars)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mediasearch.errors import ConfigError
from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scenes",
        help="write a gallery of generated, captioned scenes of coloured shapes",
        description=(
            "Render COUNT scenes of one to three coloured shapes (the world the offline micro CLIP "
            "was trained on) into OUT: one image file and one JSON sidecar (label and caption) per "
            "scene. The same seed always gives the same gallery, and a smaller gallery of a seed is "
            "a prefix of a larger one."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write into (created if missing)")
    p.add_argument("--count", required=True, type=int, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="gallery seed (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: %(default)s)")
    p.add_argument(
        "--format", choices=("jpeg", "png"), default="jpeg", help="image file format (default: %(default)s)"
    )
    p.add_argument(
        "--exclude-held-out",
        action="store_true",
        help="never draw the colour-shape pairs held out of the micro CLIP's training",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.progress import Progress

    from mediasearch.export.micro.scenes import HELD_OUT_COMBOS, write_gallery

    if args.count < 1 or args.size < 16:
        raise ConfigError("--count must be at least 1 and --size at least 16 pixels")
    with Progress() as progress:
        task = progress.add_task(f"rendering scenes into {args.out}", total=args.count)
        paths = write_gallery(
            args.out,
            args.count,
            args.seed,
            args.size,
            held_out_combos=HELD_OUT_COMBOS if args.exclude_held_out else (),
            image_format=args.format,
            progress=lambda done, _total: progress.update(task, completed=done),
        )
    print(f"wrote {len(paths)} scenes ({args.size}x{args.size} {args.format}) to {args.out}")
    return 0
