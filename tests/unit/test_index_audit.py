"""The chaos and soak audit tells lost, stale, duplicated and resurrected keys apart (what one
replica of each shard serves against the ledger), so a clean chaos summary means something."""

from __future__ import annotations

from mediasearch.dev.index_audit import AuditResult, Row, check_view


def _rows(*rows: tuple[int, str, str, str]) -> dict[int, Row]:
    return {r[0]: Row(*r) for r in rows}


def test_the_audit_flags_each_kind_of_wrong_key_and_passes_a_right_one() -> None:
    metadata = _rows(
        (1, "ok.jpg", "e1", "indexed"),
        (2, "stale.jpg", "old", "indexed"),  # the last PUT (etag "new") never made it
        (3, "twice.jpg", "e3", "indexed"),
        (4, "twice.jpg", "e3b", "indexed"),  # the same key under a second id
        (5, "back.jpg", "e5", "indexed"),  # deleted, served again
        (6, "gone.jpg", "e6", "removed"),  # deleted and removed: fine even if a segment still holds it
        (7, "repeat.jpg", "e7", "indexed"),
    )
    live = {"ok.jpg": "e1", "stale.jpg": "new", "twice.jpg": "e3b", "missing.jpg": "e8", "repeat.jpg": "e7"}
    gone = {"back.jpg", "gone.jpg"}
    result = AuditResult(images=len(live), deleted=len(gone))
    check_view([1, 2, 3, 4, 5, 6, 7, 7, 99], metadata, live, gone, result)
    assert result.lost == {"stale.jpg", "missing.jpg"}
    assert result.stale == {"stale.jpg"}
    assert result.duplicated == {"twice.jpg", "repeat.jpg"}
    assert result.resurrected == {"back.jpg"}
    assert result.orphans == {6, 99}
    assert not result.clean


def test_a_view_that_serves_exactly_the_ledger_is_clean() -> None:
    metadata = _rows((1, "a.jpg", "e1", "indexed"), (2, "b.jpg", "e2", "removed"))
    result = AuditResult(images=1, deleted=1)
    check_view([1], metadata, {"a.jpg": "e1"}, {"b.jpg"}, result)
    assert result.clean and "every key as expected" in result.describe()
