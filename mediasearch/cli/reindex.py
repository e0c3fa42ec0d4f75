"""``mediasearch reindex``: recompute every indexed image's embedding with another model into a new
index generation (resumable, in parts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mediasearch.cli._indexing import add_common, run_with_progress, settings_from
from mediasearch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reindex",
        help="recompute every indexed image's embedding with another model, into a new generation",
        description=(
            "Read every indexed image's original again (the bucket, or MEDIASEARCH_IMAGES_ROOT for a "
            "folder), encode it with the model of --model-repository (MEDIASEARCH_ENCODER: in-process, "
            "or that model's Triton) and stage the vectors in the generation building for that model "
            "(made on the first run; staged segments are never served). Safe to kill: run it again "
            "and it goes on with the images the generation does not hold yet. --part i/N splits the "
            "work between N runs (id mod N). It ends with the completeness check: every indexed image "
            "has exactly one vector in the generation, or the missing ones are listed. Switching "
            "searches to the new generation is not built yet."
        ),
    )
    add_common(p)  # --model-repository: the NEW model's repository (required below)
    p.add_argument("--model-name", help="its name in the repository (MEDIASEARCH_MODEL_NAME, clip)")
    p.add_argument("--part", default="0/1", help="this run's share, i/N: the images with id mod N == i")
    p.add_argument(
        "--images-root", type=Path, help="folder of folder-indexed images (MEDIASEARCH_IMAGES_ROOT)"
    )
    p.add_argument("--errors", type=Path, help="write one JSON line per image that failed here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only), e.g. in a Job")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from mediasearch.errors import ConfigError
    from mediasearch.indexer.reindex import Part, ReindexResult, areindex

    if not args.model_repository:
        raise ConfigError("--model-repository is required: the new model's repository (mediasearch export)")
    settings = settings_from(args, settings, model_name=args.model_name, images_root=args.images_root)
    part = Part.parse(args.part)
    results: list[ReindexResult] = []

    def work(bar: object) -> object:
        results.append(asyncio.run(areindex(settings, part, progress=bar)))  # type: ignore[arg-type]
        return results[0].report

    code = run_with_progress(args, f"reindexing part {part}", work)
    result = results[0]
    done = result.completeness
    print(
        f"generation {result.generation} (model {result.model_version}, {result.dim}-wide), part {part}: "
        f"{done.held} of {done.indexed} indexed images have a vector in it"
        + (f"; {done.gone} vectors of images removed since" if done.gone else "")
    )
    if done.missing:
        shown = ", ".join(map(str, done.missing[:20]))
        more = f" and {len(done.missing) - 20} more" if len(done.missing) > 20 else ""
        print(f"missing ({len(done.missing)}): ids {shown}{more}")
    if done.doubled:
        print(f"staged twice ({len(done.doubled)}): ids {', '.join(map(str, done.doubled[:20]))}")
    for image_id, uri, why in result.problems[:20]:
        print(f"  no vector for image {image_id} ({uri}): {why}")
    if args.errors is not None:
        with args.errors.open("w") as out:
            for image_id, uri, why in result.problems:
                out.write(json.dumps({"id": image_id, "image": uri, "error": why}) + "\n")
        print(f"{len(result.problems)} images without a vector listed in {args.errors}")
    if done.complete:
        print(f"generation {result.generation} is complete: every indexed image has exactly one vector")
    return code
