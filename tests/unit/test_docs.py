"""The README and docs/ name only what exists: make targets, mediasearch subcommands, settings,
linked files; the settings reference is the one the code generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mediasearch.cli import _COMMANDS
from mediasearch.dev import settings_doc
from mediasearch.dev.layout import ROOT
from mediasearch.settings import Settings

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```.*?```", re.S)
_SPAN = re.compile(r"`[^`\n]+`")
_MAKE = re.compile(r"(?<![\w-])make ([a-z][a-z-]*)")
_COMMAND = re.compile(r"(?<![\w./-])(?<!from )(?<!import )mediasearch ([a-z][a-z-]*)")
_SETTING = re.compile(r"MEDIASEARCH_([A-Z0-9_]*[A-Z0-9])")
_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
_REPO_PATH = re.compile(r"`((?:mediasearch|gateway|indexer|export|tests|bench|proto|docs|\.ci)/[\w./-]*)`")


def code(page: Path) -> str:
    """What a reader would type: fenced blocks and inline code spans."""
    text = page.read_text()
    return "\n".join([*_FENCE.findall(text), *_SPAN.findall(_FENCE.sub("", text))])


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_pages_are_there_and_the_readme_is_a_front_door() -> None:
    names = {p.name for p in PAGES}
    for page in ("architecture.md", "query-path.md", "ingestion.md", "operations.md", "benchmarks.md"):
        assert page in names
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) < 150
    top = "\n".join(readme[:25])
    assert "make demo" in top and "make test" in top


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_make_target_a_page_names_exists(page: Path) -> None:
    named = set(_MAKE.findall(code(page)))
    assert named <= make_targets(), f"not in the Makefile: {sorted(named - make_targets())}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_mediasearch_subcommand_a_page_names_exists(page: Path) -> None:
    named = set(_COMMAND.findall(code(page)))
    assert named <= set(_COMMANDS), f"no such subcommand: {sorted(named - set(_COMMANDS))}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_setting_a_page_names_exists(page: Path) -> None:
    named = {name.lower() for name in _SETTING.findall(page.read_text())}
    unknown = sorted(named - set(Settings.model_fields))
    assert not unknown, f"no such setting: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    targets = [t for t, _ in _LINK.findall(page.read_text()) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_path_a_page_names_exists(page: Path) -> None:
    named = set(_REPO_PATH.findall(_FENCE.sub("", page.read_text())))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


def test_the_checks_catch_a_made_up_target_command_and_setting(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Run `make deploy-everything`, then `mediasearch teleport` with MEDIASEARCH_WARP_SPEED.")
    assert set(_MAKE.findall(code(page))) == {"deploy-everything"}
    assert set(_COMMAND.findall(code(page))) == {"teleport"}
    assert _SETTING.findall(page.read_text()) == ["WARP_SPEED"]
    assert _REPO_PATH.findall("see `mediasearch/gateway/app.py`") == ["mediasearch/gateway/app.py"]


def test_the_settings_reference_is_what_the_code_generates() -> None:
    page = settings_doc.PAGE.read_text()
    assert settings_doc.render(page) == page, "stale: run python -m mediasearch.dev.settings_doc"


def test_every_setting_is_described_for_the_reference() -> None:
    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not undocumented
    for name in Settings.model_fields:
        assert f"`MEDIASEARCH_{name.upper()}`" in settings_doc.reference()
