"""The live view's outbox cursor: ids in order, holes waited for until they fill or stay empty."""

from __future__ import annotations

from api.outbox_cursor import OutboxCursor


def test_contiguous_ids_pass_at_once() -> None:
    cursor = OutboxCursor(10)
    assert cursor.advance([11, 12, 13], xmin=500, xmax=500, now=0.0) == 13


def test_a_hole_holds_back_the_ids_above_it_until_it_fills() -> None:
    cursor = OutboxCursor(10)
    # 12 is drawn by a transaction still running (xid 498 < xmax 500).
    assert cursor.advance([11, 13, 14], xmin=498, xmax=500, now=0.0) == 11
    assert cursor.advance([13, 14], xmin=498, xmax=501, now=5.0) == 11
    assert cursor.advance([12, 13, 14], xmin=501, xmax=502, now=6.0) == 14


def test_a_hole_is_skipped_once_every_older_transaction_ended_and_the_grace_passed() -> None:
    cursor = OutboxCursor(10, grace_s=1.0)
    assert cursor.advance([12], xmin=498, xmax=500, now=0.0) == 10
    # Older transactions still run: wait, however long it takes.
    assert cursor.advance([12], xmin=499, xmax=510, now=30.0) == 10
    # None runs any more, but within the grace: wait.
    cursor = OutboxCursor(10, grace_s=1.0)
    assert cursor.advance([12], xmin=498, xmax=500, now=0.0) == 10
    assert cursor.advance([12], xmin=500, xmax=510, now=0.5) == 10
    # Both: 11 stays empty (rolled back), 12 passes.
    assert cursor.advance([12], xmin=500, xmax=510, now=1.0) == 12


def test_holes_seen_together_settle_together_and_a_later_hole_waits_anew() -> None:
    cursor = OutboxCursor(10, grace_s=1.0)
    assert cursor.advance([12, 14], xmin=490, xmax=500, now=0.0) == 10
    # 11 and 13 both stay empty; 16 was drawn after the first sighting: a new hole.
    assert cursor.advance([12, 14, 15, 17], xmin=500, xmax=520, now=2.0) == 15
    assert cursor.advance([17], xmin=505, xmax=521, now=3.5) == 15
    assert cursor.advance([17], xmin=520, xmax=521, now=3.5) == 17


def test_the_wait_for_a_hole_ends_when_it_fills() -> None:
    cursor = OutboxCursor(10, grace_s=1.0)
    assert cursor.advance([12], xmin=490, xmax=500, now=0.0) == 10
    assert cursor.advance([11, 12], xmin=495, xmax=500, now=0.2) == 12
    # A new hole after that is judged on its own snapshot.
    assert cursor.advance([14], xmin=495, xmax=530, now=5.0) == 12
    assert cursor.advance([14], xmin=520, xmax=531, now=10.0) == 12
    assert cursor.advance([14], xmin=530, xmax=531, now=10.0) == 14


def test_nothing_new_changes_nothing() -> None:
    cursor = OutboxCursor(10)
    assert cursor.advance([], xmin=1, xmax=1, now=0.0) == 10
