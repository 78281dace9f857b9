"""The take-back notifications: chunked under PostgreSQL's payload limit, read defensively."""

from __future__ import annotations

import uuid

from dialer.take_back import call_ids, payloads


def test_payloads_carry_every_id_under_the_limit() -> None:
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    out = payloads(ids)
    assert len(out) > 1
    assert all(len(p.encode()) < 8000 for p in out)
    assert [i for p in out for i in call_ids(p)] == ids
    assert payloads([]) == []


def test_call_ids_ignore_what_is_not_a_list_of_strings() -> None:
    assert call_ids('["a", 3, null, "b"]') == ["a", "b"]
    assert call_ids('{"ids": ["a"]}') == []
    assert call_ids("not json") == []
