"""HTTP/JSON against gRPC for the same calls in the same run, and the page's time to first results.

    python -m bench.http            (make bench-http ARGS=...)

Serves a gallery of ``--scenes`` labelled scenes (the demo's, indexed with the committed micro
CLIP) from ``mediasearch serve`` in embedded mode, in its own process: one gateway, both
protocols on their own ports, the same query path behind them. Then, at concurrency 1:

(a) SearchText: round by round the same sentence through gRPC (the project's stubs on one channel)
    and through HTTP/JSON (one keep-alive connection, the JSON encoded and decoded by the client),
    in alternating order so neither always goes first; p50 and p99 of each and the p50 difference:
    what the HTTP layer adds (routing, JSON in and out, uvicorn) over gRPC's.
(b) GetImage: the same comparison for a call with no encoder (one metadata lookup), where a
    per-call cost of the HTTP layer would stand out.
(c) the page: Debian's chromium (Playwright) opens ``/?q=<sentence>`` in a fresh browser context
    (empty cache) ``--page-runs`` times; time to first results is the navigation's start to the
    first result card in the DOM, and to all of the first screen's thumbnails decoded.

The state (model export, gallery, index) is cached under build/bench/http/. The last line is the
summary.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import time
import urllib.parse
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mediasearch._proto.mediasearch.v1 import search_pb2, search_pb2_grpc
from mediasearch.dev.processes import start_gateway
from mediasearch.settings import Settings

WORK = Path("build/bench/http")
CHROMIUM = Path("/usr/bin/chromium")
TOP_K = 24
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
SHAPES = ("circles", "squares", "triangles", "stars")


def _state(scenes: int) -> tuple[Path, Path, Path]:
    """The exported micro model, the gallery and the embedded index (built once per --scenes)."""
    from mediasearch.export import export_model
    from mediasearch.export.micro import MODEL_DIR
    from mediasearch.export.micro.scenes import write_gallery
    from mediasearch.gateway.app import embedded_settings
    from mediasearch.indexer.folder import index_folder

    root = WORK / f"scenes-{scenes}"
    repo, gallery, state = root / "repo", root / "gallery", root / "state"
    if (root / "ready").is_file():
        return repo, gallery, state
    shutil.rmtree(root, ignore_errors=True)
    export_model(str(MODEL_DIR), repo, "clip")
    write_gallery(gallery, scenes, 7)
    settings = Settings.defaults().with_overrides(
        **embedded_settings(state), images_root=gallery.resolve(), model_repository=repo
    )
    report = index_folder(settings, gallery)
    print(f"indexed {report.indexed} scenes ({report.failed} failed) in {report.elapsed_s:.1f} s")
    (root / "ready").write_text("")
    return repo, gallery, state


def _env(repo: Path, gallery: Path, state: Path) -> dict[str, str]:
    return {
        "MEDIASEARCH_DATABASE_URL": f"sqlite:///{(state / 'mediasearch.db').resolve()}",
        "MEDIASEARCH_SEGMENT_STORE_URL": (state / "segments").resolve().as_uri(),
        "MEDIASEARCH_SEGMENT_CACHE_DIR": str((state / ".segment-cache").resolve()),
        "MEDIASEARCH_ENCODER": "local",
        "MEDIASEARCH_MODEL_REPOSITORY": str(repo.resolve()),
        "MEDIASEARCH_IMAGES_ROOT": str(gallery.resolve()),
        "MEDIASEARCH_LOG_LEVEL": "WARNING",
    }


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    counts = ("one", "two", "three")
    return [
        f"{counts[rng.integers(3)]} {COLOURS[rng.integers(len(COLOURS))]} {SHAPES[rng.integers(len(SHAPES))]}"
        for _ in range(n)
    ]


class HttpJson:
    """One keep-alive connection; the body encoded and the answer decoded as a client would."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.connection.request(method, path, body=data, headers=headers)
        reply = self.connection.getresponse()
        payload = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {payload[:300]!r}")
        result: dict[str, Any] = json.loads(payload)
        return result


def _timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1e3, result


def _compare(rounds: int, grpc_call: Any, http_call: Any, same: Any) -> tuple[list[float], list[float]]:
    """``rounds`` interleaved pairs; ``same(grpc_result, http_result)`` checks they agree."""
    on_grpc, on_http = [], []
    for i in range(rounds):
        if i % 2 == 0:
            g, rg = _timed(lambda i=i: grpc_call(i))
            h, rh = _timed(lambda i=i: http_call(i))
        else:
            h, rh = _timed(lambda i=i: http_call(i))
            g, rg = _timed(lambda i=i: grpc_call(i))
        same(rg, rh)
        on_grpc.append(g)
        on_http.append(h)
    return on_grpc, on_http


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# Installed before the page's own scripts: the moment the first result card enters the DOM, and the
# first frame where every thumbnail on the first screen is decoded, on the page's own clock
# (navigation start = 0), so the measurement adds no round trip to the browser.
_PROBE = """
window.__firstResult = null; window.__thumbnails = null;
const screenDone = () => {
  const imgs = [...document.querySelectorAll('[data-id] img')]
    .filter(img => img.getBoundingClientRect().top < innerHeight);
  if (imgs.length && imgs.every(img => img.complete && img.naturalWidth > 0)) {
    window.__thumbnails = performance.now();
  } else {
    requestAnimationFrame(screenDone);
  }
};
new MutationObserver((_, observer) => {
  if (document.querySelector('[data-id]')) {
    window.__firstResult = performance.now();
    observer.disconnect();
    requestAnimationFrame(screenDone);
  }
}).observe(document, {childList: true, subtree: true});
"""


def _page_times(page_url: str, sentences: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Navigation start -> first result card, and -> every thumbnail on the first screen decoded."""
    from playwright.sync_api import sync_playwright

    first, thumbs = [], []
    args = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            for i in range(runs + 1):  # the first one warms the server's caches and is dropped
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(_PROBE)
                page = context.new_page()
                url = f"{page_url}?q={urllib.parse.quote(sentences[i % len(sentences)])}"
                page.goto(url)
                deadline = time.monotonic() + 30
                while page.evaluate("window.__thumbnails") is None:  # (wait_for_function evals: CSP)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url}: no results with thumbnails within 30 s")
                    time.sleep(0.02)
                at_first, at_thumbs = page.evaluate("[window.__firstResult, window.__thumbnails]")
                if i > 0:
                    first.append(at_first)
                    thumbs.append(at_thumbs)
                context.close()
        finally:
            browser.close()
    return first, thumbs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=1000, help="gallery size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=400, help="SearchText pairs (default: %(default)s)")
    parser.add_argument("--get-rounds", type=int, default=1000, help="GetImage pairs (default: %(default)s)")
    parser.add_argument("--page-runs", type=int, default=15, help="page navigations (default: %(default)s)")
    args = parser.parse_args()

    repo, gallery, state = _state(args.scenes)
    folder = WORK / "run"
    folder.mkdir(parents=True, exist_ok=True)
    child, port, _ = start_gateway("gateway", _env(repo, gallery, state), folder)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = search_pb2_grpc.SearchServiceStub(channel)
        web = HttpJson(child.http_port)
        sentences = _sentences(64)
        ids = [
            int(r["id"])
            for r in web.call("POST", "/v1/search/text", {"text": "shapes", "topK": 100})["results"]
        ]
        for s in sentences[:16]:  # warm both paths (encoder sessions, connections, caches)
            stub.SearchText(search_pb2.SearchTextRequest(text=s, top_k=TOP_K), timeout=30)
            web.call("POST", "/v1/search/text", {"text": s, "topK": TOP_K})

        def same_search(g: Any, h: dict[str, Any]) -> None:
            assert [str(r.id) for r in g.results] == [r["id"] for r in h["results"]], "protocols disagree"

        search_grpc, search_http = _compare(
            args.rounds,
            lambda i: stub.SearchText(
                search_pb2.SearchTextRequest(text=sentences[i % len(sentences)], top_k=TOP_K), timeout=30
            ),
            lambda i: web.call(
                "POST", "/v1/search/text", {"text": sentences[i % len(sentences)], "topK": TOP_K}
            ),
            same_search,
        )

        def same_image(g: Any, h: dict[str, Any]) -> None:
            assert str(g.id) == h["id"], "protocols disagree"

        get_grpc, get_http = _compare(
            args.get_rounds,
            lambda i: stub.GetImage(search_pb2.GetImageRequest(id=ids[i % len(ids)]), timeout=30),
            lambda i: web.call("GET", f"/v1/images/{ids[i % len(ids)]}"),
            same_image,
        )
        channel.close()
        page_first: list[float] = []
        page_thumbs: list[float] = []
        if CHROMIUM.is_file() and args.page_runs > 0:
            page_first, page_thumbs = _page_times(
                f"http://127.0.0.1:{child.http_port}/", sentences, args.page_runs
            )
        else:
            print(
                f"no {CHROMIUM}: the page's time to first results is not measured (apt-get install chromium)"
            )
    finally:
        child.stop()

    for name, g, h in (("SearchText", search_grpc, search_http), ("GetImage", get_grpc, get_http)):
        print(
            f"{name:<10} gRPC p50 {_pct(g, 50):6.2f} p99 {_pct(g, 99):6.2f} ms · HTTP/JSON p50 "
            f"{_pct(h, 50):6.2f} p99 {_pct(h, 99):6.2f} ms · HTTP adds {_pct(h, 50) - _pct(g, 50):+.2f} ms "
            f"at the p50 (paired median {statistics.median(np.subtract(h, g)):+.2f})"
        )
    if page_first:
        print(
            f"page: first results {statistics.median(page_first):.0f} ms, first screen's thumbnails "
            f"{statistics.median(page_thumbs):.0f} ms after navigation start (median of {len(page_first)}, "
            f"fresh browser context each)"
        )
    nan = float("nan")
    print(
        f"http: scenes={args.scenes} search_grpc_p50_ms={_pct(search_grpc, 50):.2f} "
        f"search_http_p50_ms={_pct(search_http, 50):.2f} "
        f"added_p50_ms={_pct(search_http, 50) - _pct(search_grpc, 50):.2f} "
        f"search_grpc_p99_ms={_pct(search_grpc, 99):.2f} search_http_p99_ms={_pct(search_http, 99):.2f} "
        f"getimage_added_p50_ms={_pct(get_http, 50) - _pct(get_grpc, 50):.2f} "
        f"page_first_results_ms={statistics.median(page_first) if page_first else nan:.0f} "
        f"page_thumbnails_ms={statistics.median(page_thumbs) if page_thumbs else nan:.0f}"
    )


if __name__ == "__main__":
    main()
