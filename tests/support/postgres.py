"""What the ``postgres`` fixture hands out: ``with postgres() as url:`` opens a throwaway database
on the server at 127.0.0.1:5432 (the fixture has already skipped the test when there is none)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

Postgres = Callable[[], AbstractContextManager[str]]
SKIP_REASON = "PostgreSQL is not reachable at 127.0.0.1:5432 (.ci/run starts it)"
