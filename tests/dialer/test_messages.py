"""Dial jobs and call events: round trips, hostile bodies, any meta a CRM sends."""

from __future__ import annotations

import pytest

from dialer.messages import CallEvent, DialJob, MessageError


def test_dial_job_round_trip_with_wide_integers_in_meta() -> None:
    job = DialJob(
        call_id="c",
        record_id="r",
        tenant_id="t",
        workflow_id="w",
        node_id="call",
        phone_e164="+12125550123",
        context={"meta": {"big": 123456789012345678901234567890, "list": [1, None]}},
    )
    assert DialJob.from_bytes(job.to_bytes()) == job


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'{"call_id": 1, "x": 2}', b"\xff"])
def test_unreadable_bodies_are_message_errors(body: bytes) -> None:
    with pytest.raises(MessageError):
        DialJob.from_bytes(body)
    with pytest.raises(MessageError):
        CallEvent.from_bytes(body)


def test_unknown_event_kind_refused() -> None:
    event = CallEvent("c", "r", "t", "w", kind="exploded", at=1.0)
    with pytest.raises(MessageError):
        CallEvent.from_bytes(event.to_bytes())
