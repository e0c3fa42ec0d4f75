"""``mediasearch query``: ask a running search gateway and print a ranked table (and a contact sheet)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from mediasearch.settings import Settings

if TYPE_CHECKING:
    from mediasearch.client import Response


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="search a running gateway with a sentence (or an image) and print the ranked results",
        description=(
            "Send TEXT to the search gateway (SearchText), or --image FILE / --like ID (SearchImage), "
            "print the ranked results as a table and, with --sheet, write a contact sheet of the "
            "result images (fetched from their URLs)."
        ),
    )
    p.add_argument("text", nargs="?", default="", help='the sentence, e.g. "two red circles"')
    p.add_argument("--address", help="gateway host:port (default: MEDIASEARCH_GATEWAY_HOST/PORT)")
    p.add_argument("--top-k", type=int, default=10, help="how many results (default: %(default)s)")
    p.add_argument("--image", type=Path, help="search by this image file instead of text")
    p.add_argument("--like", type=int, help='"more like this": search by an indexed image id')
    p.add_argument("--tag", action="append", default=[], help="only images with this tag (repeatable: any)")
    p.add_argument("--content-type", action="append", default=[], help="only this content type (repeatable)")
    p.add_argument("--bucket", default="", help="only images in this bucket")
    p.add_argument("--prefix", default="", help="only keys starting with this prefix")
    p.add_argument("--min-score", type=float, default=0.0, help="drop results scoring below this")
    p.add_argument("--pages", type=int, default=1, help="follow next_page_token this many pages")
    p.add_argument("--sheet", type=Path, help="write a contact sheet PNG of the results here")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, s")
    p.add_argument("--api-key", help="API key sent as 'authorization: Bearer' (MEDIASEARCH_API_KEY)")
    p.add_argument("--tls", action="store_true", help="connect with TLS, verified by the system's CAs")
    p.add_argument(
        "--tls-ca", type=Path, help="connect with TLS, verified by this PEM CA (MEDIASEARCH_TLS_CA)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from mediasearch.client import SearchClient
    from mediasearch.errors import ConfigError

    if bool(args.text) + (args.image is not None) + (args.like is not None) != 1:
        raise ConfigError("give exactly one of TEXT, --image FILE or --like ID")
    address = args.address or f"{settings.gateway_host}:{settings.gateway_port}"
    console = Console()
    options = {
        "tags_any": args.tag,
        "content_types": args.content_type,
        "bucket": args.bucket,
        "key_prefix": args.prefix,
        "min_score": args.min_score or None,
    }
    responses = []
    api_key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    tls_ca = args.tls_ca or settings.tls_ca
    with SearchClient(
        address, timeout_s=args.timeout, api_key=api_key, tls=args.tls, tls_ca=tls_ca
    ) as client:
        token = ""
        for _ in range(max(1, args.pages)):
            if args.text:
                response = client.search_text(args.text, args.top_k, page_token=token or None, **options)
            else:
                image = args.image.read_bytes() if args.image is not None else None
                response = client.search_image(
                    image, args.like, args.top_k, page_token=token or None, **options
                )
            responses.append(response)
            token = response.next_page_token
            if not token:
                break
    title = args.text or (f"like image {args.like}" if args.like is not None else str(args.image))
    print_results(console, title, responses)
    if args.sheet is not None:
        from mediasearch.cli._sheets import write_sheet

        path = write_sheet([r for resp in responses for r in resp.results], args.sheet, title)
        console.print(f"contact sheet: {path}")
    return 0


def print_results(console: object, title: str, responses: list[Response]) -> None:
    from rich.console import Console
    from rich.table import Table

    assert isinstance(console, Console)
    results = [r for resp in responses for r in resp.results]
    last = responses[-1]
    t = last.timings_ms
    caption = (
        f"{t['total']:.1f} ms (encode {t['encode']:.1f}, search {t['search']:.1f}, "
        f"merge {t['merge']:.1f}, metadata {t['metadata']:.1f}) · request {last.request_id}"
        + (" · [bold red]PARTIAL: a shard did not answer[/]" if any(r.partial for r in responses) else "")
    )
    table = Table(title=f"“{title}”", caption=caption)
    for column, justify in (("#", "right"), ("score", "right"), ("id", "right"), ("image", "left"),
                            ("size", "right"), ("tags", "left")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for rank, r in enumerate(results, 1):
        where = r.key if r.bucket == "local" else f"{r.bucket}/{r.key}"
        table.add_row(
            str(rank), f"{r.score:.3f}", str(r.id), where, f"{r.width}x{r.height}", ", ".join(r.tags)
        )
    console.print(table)
    if not results:
        console.print("no results")
