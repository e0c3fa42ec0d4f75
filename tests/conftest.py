"""Shared fixtures. Tiers are set from the folder (tests/unit, tests/integration, tests/e2e)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mediasearch.dev.emulated_aws import moto_server
from tests.support.postgres import SKIP_REASON, Postgres

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


# -- PostgreSQL: one skip guard, throwaway databases ---------------------------------------------
@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """``with postgres() as url:`` a throwaway database; the test is skipped without the server."""
    from mediasearch.dev import postgres as harness

    if not harness.available():
        pytest.skip(SKIP_REASON)
    return harness.throwaway_database


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """A throwaway PostgreSQL database for one test."""
    with postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated engine on each metadata backend (SQLite file, throwaway PostgreSQL database)."""
    from mediasearch.metadata.db import make_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


# -- models ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny random CLIP with the real CLIP tokenizer, saved like a downloaded checkpoint."""
    from mediasearch.export.random_clip import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported into a model repository (through the public export path)."""
    from mediasearch.export import export_model

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    export_model(str(tiny_checkpoint), out, "clip")
    return out


@pytest.fixture(scope="session")
def micro_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed micro CLIP exported like any checkpoint (the offline default model)."""
    from mediasearch.cli import main
    from mediasearch.export.micro import MODEL_DIR

    out = tmp_path_factory.mktemp("micro") / "model_repository"
    assert main(["export", "--model", str(MODEL_DIR), "--out", str(out)]) == 0
    return out


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A fresh moto S3 + SQS server for one test (integration and end-to-end tiers)."""
    with moto_server() as url:
        yield url
