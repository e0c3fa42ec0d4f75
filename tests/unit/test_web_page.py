"""The search page's files, read statically: what the Content-Security-Policy forbids is absent,
every module is preloaded, and every element the scripts look up by id exists."""

from __future__ import annotations

import re

from mediasearch.gateway.http_api import WEB_ROOT

PAGE = (WEB_ROOT / "index.html").read_text()
SCRIPTS = {path.name: path.read_text() for path in WEB_ROOT.glob("*.js")}


def test_the_page_has_no_inline_script_or_style_for_the_policy_to_block() -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", PAGE), "an inline <script>"
    assert "<style" not in PAGE and not re.search(r"\sstyle=", PAGE)
    assert not re.search(r"\son[a-z]+=", PAGE), "an inline event handler"


def test_every_module_the_page_imports_is_preloaded_with_it() -> None:
    imported = {name for text in SCRIPTS.values() for name in re.findall(r'from "\./([\w-]+\.js)"', text)}
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/([\w-]+\.js)">', PAGE))
    assert imported and imported == preloaded, imported ^ preloaded
    assert all(name in SCRIPTS for name in imported)


def test_every_element_the_scripts_look_up_by_id_is_on_the_page() -> None:
    lookups = r'(?:getElementById|\$)\("([\w-]+)"\)'  # app.js: const $ = (id) => document.getElementById(id)
    wanted = {name for text in SCRIPTS.values() for name in re.findall(lookups, text)}
    present = set(re.findall(r'\sid="([\w-]+)"', PAGE))
    assert wanted and wanted <= present, wanted - present
