"""``mediasearch demo`` (``make demo``): the whole product in one process, from a clean clone.

1. export the offline micro CLIP into the model repository (parity-checked ONNX);
2. draw a gallery of labelled sample scenes;
3. index the folder with a progress bar (the indexer's folder pipeline, embedded: SQLite + a local
   segment folder);
4. start the embedded search gateway (the real gRPC server, in-process shards, local encoder);
5. run example queries through the gRPC client, print ranked tables (a check mark where the scene
   shows what the query asks) and write one contact sheet per query;
6. stop cleanly, or keep serving with ``--serve`` until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from mediasearch.settings import Settings

QUERIES = (
    "two red circles",
    "a small blue square on a black background",
    "three yellow stars",
    "a large green triangle",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="export the offline model, index sample scenes, serve them and run example queries",
        description=(
            "From nothing to ranked results in one process: export the offline micro CLIP (or --model), "
            "draw --count labelled scenes, index them (progress bar), start the embedded search gateway, "
            "send example queries through the gRPC client, print the ranked results and write contact "
            "sheets; then stop, or keep serving with --serve."
        ),
    )
    p.add_argument(
        "--model",
        default=None,
        help="CLIP checkpoint folder (default: the micro model in export/micro/model; a seeded tiny "
        "random CLIP while that is absent)",
    )
    p.add_argument("--repository", help="model repository (MEDIASEARCH_MODEL_REPOSITORY, model_repository)")
    p.add_argument(
        "--out", default="demo-output", help="gallery, index and sheets go here (default: %(default)s)"
    )
    p.add_argument("--count", type=int, default=300, help="scenes in the gallery (default: %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="seed of the drawn scenes (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=5, help="results per example query (default: %(default)s)")
    p.add_argument("--query", action="append", help="run this query instead of the examples (repeatable)")
    p.add_argument("--port", type=int, default=0, help="gateway gRPC port (default: a free one)")
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="search page and HTTP/JSON API port (default: 8080 with --serve, a free one when that is "
        "taken or without --serve)",
    )
    p.add_argument("--serve", action="store_true", help="keep serving after the examples, until Ctrl-C")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from rich.console import Console

    from mediasearch.errors import ConfigError, NotFound
    from mediasearch.export import export_model

    if not args.verbose and settings.log_level == "INFO":  # the default: the tables say it better
        logging.getLogger().setLevel(logging.WARNING)
    console = Console()
    settings = settings.with_overrides(model_repository=args.repository)
    if args.count < 1:
        raise ConfigError("--count must be at least 1")
    out = Path(args.out)
    model = args.model or _default_model(out)
    if not Path(model).is_dir():
        raise NotFound(f"no model at {model}; pass --model with a CLIP checkpoint folder")
    with console.status("exporting the model to ONNX (parity-checked against PyTorch)..."):
        report = export_model(str(model), settings.model_repository, settings.model_name)
    console.print(
        f"[bold]model[/] {report.manifest.version} from {report.manifest.source} "
        f"(parity {report.parity.worst:.1e}, {report.seconds:.1f}s) -> {settings.model_repository}/"
    )
    gallery = _draw_gallery(console, out / "gallery", args.count, args.seed)
    settings = _settings(settings, args, out, gallery)
    _index(console, settings, gallery)
    labels = _labels(gallery)
    server = _start_gateway(settings, args)
    try:
        console.print(
            f"[bold]search gateway[/] (embedded) listening on {server.address} (gRPC) and {server.page_url}"
        )
        _examples(console, server.address, args.query or list(QUERIES), args.top_k, labels, out / "sheets")
        if args.serve:
            console.print(
                f"[bold]search page[/]: open {server.page_url} in a browser\n"
                f'gRPC: mediasearch query --address {server.address} "two red circles" · Ctrl-C stops'
            )
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        console.print("gateway stopped")
    return 0


def _start_gateway(settings: Settings, args: argparse.Namespace) -> Any:
    """The embedded gateway; with ``--serve`` its page on 8080 unless that port is taken."""
    from mediasearch.gateway.app import BackgroundGateway

    wanted = args.http_port if args.http_port is not None else (8080 if args.serve else 0)
    try:
        server = BackgroundGateway(settings, args.port, http_port=wanted)
        server.start()
    except OSError:
        if args.http_port is not None:
            raise
        server = BackgroundGateway(settings, args.port, http_port=0)  # 8080 is taken: any free port
        server.start()
    return server


def _default_model(out: Path) -> Path:
    """The micro model when it is in the checkout; otherwise a seeded tiny random CLIP (noise)."""
    from mediasearch.export.micro import MODEL_DIR
    from mediasearch.export.random_clip import save_random_clip

    if (MODEL_DIR / "config.json").is_file():
        return MODEL_DIR
    print(f"note: {MODEL_DIR} is missing; using a seeded tiny random CLIP (its matches are noise)")
    return save_random_clip(out / "tiny-random-clip", "tiny", seed=0)


def _draw_gallery(console: Any, folder: Path, count: int, seed: int) -> Path:
    from rich.progress import Progress

    from mediasearch.export.micro.scenes import write_gallery

    if folder.exists():
        shutil.rmtree(folder)
    with Progress(console=console) as progress:
        task = progress.add_task(f"drawing {count} scenes", total=count)
        write_gallery(folder, count, seed, progress=lambda done, _n: progress.update(task, completed=done))
    return folder


def _settings(settings: Settings, args: argparse.Namespace, out: Path, gallery: Path) -> Settings:
    from mediasearch.gateway.app import embedded_settings

    state = out / "state"
    if state.exists():
        shutil.rmtree(state)  # a fresh index each run: the demo shows indexing too
    return settings.with_overrides(
        **embedded_settings(state),
        images_root=gallery.resolve(),
        gateway_metrics_port=0,
    )


def _index(console: Any, settings: Any, gallery: Path) -> None:
    from mediasearch.indexer.folder import index_folder
    from mediasearch.indexer.progress import ProgressBar

    bar = ProgressBar(f"indexing {gallery}")
    report = index_folder(settings, gallery, progress=bar)
    bar.close(report, None)
    console.print(report.summary())


def _labels(gallery: Path) -> dict[str, Any]:
    from mediasearch.export.micro.scenes import SceneLabel

    labels = {}
    for sidecar in gallery.glob("*.json"):
        data = json.loads(sidecar.read_text())
        labels[data["image"]] = SceneLabel.from_dict(data["label"])
    return labels


def _examples(
    console: Any, address: str, queries: list[str], top_k: int, labels: dict[str, Any], sheets: Path
) -> None:
    from rich.table import Table

    from mediasearch.cli._sheets import write_sheet
    from mediasearch.client import SearchClient
    from mediasearch.export.micro.scenes import label_matches, parse_query

    total = hits = 0
    with SearchClient(address) as client:
        client.wait_ready()
        for text in queries:
            response = client.search_text(text, top_k=top_k)
            wanted = parse_query(text)
            t = response.timings_ms
            table = Table(
                title=f"“{text}”",
                caption=f"{t['total']:.1f} ms (encode {t['encode']:.1f}, search {t['search']:.1f}, "
                f"metadata {t['metadata']:.1f})",
            )
            for column in ("#", "score", "id", "image", "shows", "match"):
                table.add_column(column)
            for rank, r in enumerate(response.results, 1):
                label = labels.get(r.key)
                ok = label is not None and label_matches(label, wanted)
                total, hits = total + 1, hits + ok
                shown = _describe(label) if label is not None else "?"
                table.add_row(
                    str(rank), f"{r.score:.3f}", str(r.id), r.key, shown, "[green]✓[/]" if ok else "·"
                )
            console.print(table)
            sheet = write_sheet(list(response.results), sheets / f"{_slug(text)}.png", text)
            console.print(f"contact sheet: {sheet}")
    console.print(f"[bold]{hits}/{total}[/] results show what their query asks for")


def _describe(label: Any) -> str:
    shape = label.shape if label.count == 1 else f"{label.shape}s"
    where = f", {label.position}" if label.position else ""
    return f"{label.count} {label.size} {label.colour} {shape} on {label.background}{where}"


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:60]
