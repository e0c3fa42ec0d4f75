"""The search page in a real browser (headless Chromium through Playwright) against the embedded
gateway serving the demo gallery: the committed micro CLIP, so "two red circles" finds red circles,
and the gallery's sidecar labels say what each returned picture shows.

Each test leaves a screenshot in ``build/screenshots/``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mediasearch.export.micro.scenes import SceneLabel, label_matches, parse_query, write_gallery
from mediasearch.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
GALLERY_SIZE = 120
SEED = 7
TIMEOUT_MS = 15_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does) to run the search page's "
        "browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@dataclass
class Site:
    url: str  # the page, e.g. http://127.0.0.1:PORT/
    gallery: Path
    labels: dict[str, SceneLabel]  # object key -> what the scene shows
    settings: Settings


@pytest.fixture(scope="module")
def site(micro_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The demo gallery indexed with the micro CLIP and served by an embedded gateway (no keys)."""
    from mediasearch.gateway.app import BackgroundGateway, embedded_settings
    from mediasearch.indexer.folder import index_folder

    root = tmp_path_factory.mktemp("search-page")
    gallery = root / "gallery"
    write_gallery(gallery, GALLERY_SIZE, SEED)
    settings = Settings.defaults().with_overrides(
        **embedded_settings(root / "state"),
        model_repository=micro_repository,
        images_root=gallery.resolve(),
        gateway_metrics_port=0,
    )
    report = index_folder(settings, gallery)
    assert report.failed == 0 and report.indexed == GALLERY_SIZE, report.summary()
    labels = {}
    for sidecar in gallery.glob("*.json"):
        data = json.loads(sidecar.read_text())
        labels[data["image"]] = SceneLabel.from_dict(data["label"])
    server = BackgroundGateway(settings, 0, http_port=0)
    server.start()
    try:
        yield Site(server.page_url, gallery, labels, settings)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    """Chromium; after ``site``: Playwright's sync API keeps an event loop running on this thread,
    and indexing runs its own with asyncio.run."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab (own storage) at 1280x800; fails the test on an uncaught script error or
    anything the page's Content-Security-Policy blocked."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"script errors or CSP violations on the page: {errors}"


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def cards(page: Any) -> list[dict[str, str]]:
    """The result cards shown, in order: id, key, score."""
    return page.eval_on_selector_all(
        "#results .card",
        "cs => cs.map(c => ({id: c.dataset.id, key: c.dataset.key, score: c.dataset.score}))",
    )


def wait_for_results(page: Any, at_least: int = 1) -> list[dict[str, str]]:
    page.wait_for_function(
        "n => document.querySelectorAll('#results .card').length >= n && !/Searching/.test("
        "document.getElementById('status').textContent)",
        arg=at_least,
    )
    return cards(page)


def search_text(page: Any, site: Site, text: str) -> list[dict[str, str]]:
    page.goto(site.url)
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_url(re.compile(r"\?q="))
    return wait_for_results(page)


def test_text_search_shows_thumbnails_of_red_circles_for_two_red_circles(page: Any, site: Site) -> None:
    shown = search_text(page, site, "two red circles")
    assert re.search(r"\?q=two\+red\+circles$", page.url)
    top = [site.labels[c["key"]] for c in shown[:5]]
    wanted = parse_query("two red circles")
    assert all(label_matches(label, wanted) for label in top[:2]), top
    assert all(label.colour == "red" for label in top), top
    scores = [float(c["score"]) for c in shown]
    assert scores == sorted(scores, reverse=True)
    page.wait_for_function("() => document.querySelector('#results .card img').naturalWidth > 0")
    first = page.locator("#results .card img").first
    assert first.get_attribute("loading") == "lazy"
    assert first.get_attribute("width") and first.get_attribute("height")
    assert site.labels[shown[0]["key"]] and shown[0]["key"] in first.get_attribute("alt")
    assert page.locator("#timings").inner_text().lower().count("ms") >= 5
    assert "clip-" in page.locator("#timings").inner_text()
    assert page.locator("#partial").is_hidden()
    shot(page, "text-search")


def test_more_like_this_from_the_large_view_searches_by_that_image_and_back_returns(
    page: Any, site: Site
) -> None:
    page.goto(site.url + "?q=two+red+circles")  # a shared link runs its query
    text_results = wait_for_results(page, 10)
    page.locator("#results .card").first.focus()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    assert page.input_value("#q") == "two red circles"
    page.locator("#results .card").first.focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    viewer.wait_for()
    opened = text_results[1]
    assert page.locator("#viewer-title").inner_text() == opened["key"]
    assert opened["id"] in page.locator("#viewer-meta").inner_text()
    page.wait_for_function(
        "() => /\\/original\\?/.test(document.getElementById('viewer-img').src)"
    )  # the original through its signed link
    page.keyboard.press("Escape")
    viewer.wait_for(state="hidden")
    page.wait_for_function("() => document.activeElement.dataset.index === '1'")  # back on its card
    page.keyboard.press("Enter")
    page.click("#viewer-more")
    page.wait_for_url(re.compile(rf"\?like={opened['id']}$"))
    similar = wait_for_results(page, 10)
    assert opened["id"] not in {c["id"] for c in similar}
    assert [c["id"] for c in similar[:10]] != [c["id"] for c in text_results[:10]]
    assert opened["key"] in page.locator("#query-chip-text").inner_text()
    shot(page, "more-like-this")
    page.go_back()
    page.wait_for_url(re.compile(r"\?q=two\+red\+circles$"))
    page.wait_for_function(  # popstate ran the text search again (not just the address changed)
        "() => /results for “two red circles”/.test(document.getElementById('status').textContent)"
    )
    again = wait_for_results(page, 10)
    assert [c["id"] for c in again[:10]] == [c["id"] for c in text_results[:10]]
    assert page.input_value("#q") == "two red circles"


def test_uploading_or_dropping_a_gallery_picture_ranks_that_picture_first(page: Any, site: Site) -> None:
    chosen = site.gallery / "scene-7-000042.jpg"
    page.goto(site.url)
    page.set_input_files("#file", str(chosen))
    page.wait_for_url(re.compile(r"\?upload=scene-7-000042\.jpg$"))
    shown = wait_for_results(page)
    assert shown[0]["key"] == chosen.name
    assert float(shown[0]["score"]) > 0.99
    shot(page, "upload")

    dropped = site.gallery / "scene-7-000077.jpg"
    page.evaluate(
        """([name, data]) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
          for (const type of ["dragenter", "dragover", "drop"]) {
            const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
            document.body.dispatchEvent(new DragEvent(type, init));
          }
        }""",
        [dropped.name, base64.b64encode(dropped.read_bytes()).decode()],
    )
    page.wait_for_url(re.compile(r"\?upload=scene-7-000077\.jpg$"))
    page.wait_for_function(
        "key => document.querySelector('#results .card')?.dataset.key === key", arg=dropped.name
    )
    assert float(cards(page)[0]["score"]) > 0.99
    assert page.locator("#drop").is_hidden()

    second = cards(page)[1]
    page.locator("#results .card").nth(1).click()
    page.click("#viewer-search-by")  # the opened picture's own bytes, uploaded
    page.wait_for_url(re.compile(rf"\?upload={re.escape(second['key'])}$"))
    page.wait_for_function(
        "key => document.querySelector('#results .card')?.dataset.key === key", arg=second["key"]
    )
    assert float(cards(page)[0]["score"]) > 0.99


def test_filters_key_prefix_and_minimum_score_hold_for_every_shown_result(page: Any, site: Site) -> None:
    unfiltered = search_text(page, site, "two red circles")
    page.click("#filters-toggle")
    page.fill("#f-prefix", "scene-7-0000")
    page.fill("#f-min", "0.35")
    page.click("#filters-form button[type=submit]")
    page.wait_for_url(re.compile(r"prefix=scene-7-0000.*min=0\.35|min=0\.35.*prefix=scene-7-0000"))
    page.wait_for_function("() => /No more results/.test(document.getElementById('end').textContent)")
    shown = cards(page)
    assert shown, "the filters left nothing to check"
    assert len(shown) < len(unfiltered)
    assert all(c["key"].startswith("scene-7-0000") for c in shown), shown
    assert all(float(c["score"]) >= 0.35 for c in shown), shown
    assert page.locator("#filter-count").inner_text() == "2"
    shot(page, "filters")

    page.fill("#f-after", "2999-01-01")  # nothing was created that late
    page.click("#filters-form button[type=submit]")
    page.wait_for_function("() => /^No images/.test(document.getElementById('status').textContent)")
    assert cards(page) == []


def test_scrolling_loads_next_pages_without_repeats_until_no_more_and_downloads_them(
    page: Any, site: Site
) -> None:
    page.goto(site.url + "?q=a+shape&k=12")
    first = wait_for_results(page, 12)
    assert len(first) < GALLERY_SIZE
    for _ in range(30):
        if "No more results" in page.locator("#end").inner_text():
            break
        page.mouse.wheel(0, 4000)
        page.wait_for_timeout(150)
    shown = cards(page)
    assert len(shown) == GALLERY_SIZE, "every image once, page by page"
    assert len({c["id"] for c in shown}) == len(shown)
    assert f"all {GALLERY_SIZE} are shown" in page.locator("#end").inner_text()
    shot(page, "infinite-scroll")
    with page.expect_download() as pending:
        page.click("#download")
    saved = json.loads(Path(pending.value.path()).read_text())
    assert [r["id"] for r in saved["results"]] == [c["id"] for c in shown]
    assert saved["query"]["text"] == "a shape" and saved["topK"] == 12


def test_partial_results_warn_missing_thumbnails_show_placeholders_and_errors_name_their_request(
    page: Any, site: Site
) -> None:
    def partial(route: Any) -> None:
        body = route.fetch().json()
        route.fulfill(json={**body, "partial": True})

    page.route("**/v1/search/text", partial)
    page.route("**/v1/images/*/thumbnail?*", lambda route: route.fulfill(status=500))
    search_text(page, site, "two red circles")
    assert page.locator("#partial").is_visible()
    page.locator("#results .thumb.broken").first.wait_for()  # a placeholder, not a broken image
    assert "Partial results" in page.locator("#partial").inner_text()
    shot(page, "partial")

    page.unroute("**/v1/search/text")
    error = {"code": "UNAVAILABLE", "status": 503, "message": "no shard answered", "requestId": "rid-503"}
    page.route("**/v1/search/text", lambda route: route.fulfill(status=503, json={"error": error}))
    page.fill("#q", "three yellow stars")
    page.press("#q", "Enter")
    page.locator("#error").wait_for()
    assert "no shard answered" in page.locator("#error-text").inner_text()
    assert "rid-503" in page.locator("#error-id").inner_text()
    assert cards(page) == []
    shot(page, "server-error")


@pytest.fixture(scope="module")
def keyed_site(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A second gateway over the same index that requires API keys; (page URL, a valid key)."""
    from mediasearch.gateway.app import BackgroundGateway
    from mediasearch.metadata.api_keys import create_key
    from mediasearch.metadata.db import make_engine, session_factory

    engine = make_engine(site.settings.database_url)
    try:
        with session_factory(engine).begin() as session:
            key = create_key(session, "search-page-tests", ["search"])
    finally:
        engine.dispose()
    settings = site.settings.with_overrides(
        gateway_auth="required", segment_cache_dir=tmp_path_factory.mktemp("keyed-cache")
    )
    server = BackgroundGateway(settings, 0, http_port=0)
    server.start()
    try:
        yield server.page_url, key
    finally:
        server.stop()


def test_a_wrong_api_key_shows_the_gateways_message_and_the_right_one_searches(
    page: Any, keyed_site: tuple[str, str]
) -> None:
    url, key = keyed_site
    page.goto(url + "?q=two+red+circles")
    message = page.locator("#auth-message")
    message.wait_for()
    assert "needs an API key" in message.inner_text()
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.fill("#api-key", "ms_not-a-key")
    page.click("#auth-form button[type=submit]")
    page.wait_for_function(
        "() => /refused this key: the API key is not valid/"
        ".test(document.getElementById('auth-message').textContent)"
    )
    assert "request id" in message.inner_text()
    assert cards(page) == []
    shot(page, "wrong-key")
    page.fill("#api-key", key)
    page.click("#auth-form button[type=submit]")
    wait_for_results(page, 5)
    assert page.locator("#auth").is_hidden()
    assert page.evaluate("sessionStorage.getItem('mediasearch.apiKey')") == key
    # the thumbnails' signed links load without the key
    page.wait_for_function("() => document.querySelector('#results .card img').naturalWidth > 0")
    shot(page, "right-key")
