"""Dial jobs and call events: round trips, hostile bodies, any meta a CRM sends."""

from __future__ import annotations

import json
from dataclasses import asdict

import orjson
import pytest

from dialer.messages import CallEvent, DialJob, MessageError, decode_events, encode_events


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


def test_bodies_are_the_same_json_as_the_fields_as_a_dict() -> None:
    """The fast path (orjson reading the dataclass) writes what ``asdict`` would."""
    event = CallEvent(
        "c", "r", "t", "w", kind="ended", at=1.5, worker_id="w1",
        data={"times": {"dialing": 1.0}, "media_stats": {"lost": [0, 1]}, "x": None},
    )  # fmt: skip
    assert orjson.loads(event.to_bytes()) == json.loads(json.dumps(asdict(event)))
    assert CallEvent.from_bytes(event.to_bytes()) == event
    # Non-string keys: orjson refuses them, the stdlib path writes them as strings.
    odd = CallEvent("c", "r", "t", "w", kind="ended", at=1.0, data={"by_code": {486: 2}})
    assert CallEvent.from_bytes(odd.to_bytes()).data == {"by_code": {"486": 2}}


def _event(i: int) -> CallEvent:
    return CallEvent(f"c{i}", f"r{i}", "t", "w", "ended", 1.5, "w1", {"disposition": "busy"})


def test_events_sent_together_read_back_in_order() -> None:
    events = [_event(i) for i in range(3)]
    assert decode_events(encode_events(events)) == (events, [])
    # One event alone is the event itself, as a progress event's message is.
    assert encode_events(events[:1]) == events[0].to_bytes()
    assert decode_events(events[0].to_bytes()) == (events[:1], [])


@pytest.mark.parametrize(
    ("body", "readable", "errors"),
    [
        (b"not json", 0, 1),
        (b"[]", 0, 1),
        (b"7", 0, 1),
        (b'[1, {"kind": "ended"}]', 0, 2),
        (b"[" + _event(0).to_bytes() + b', {"kind": "nope"}]', 1, 1),
    ],
)
def test_an_unreadable_element_does_not_hide_the_rest(
    body: bytes, readable: int, errors: int
) -> None:
    events, problems = decode_events(body)
    assert (len(events), len(problems)) == (readable, errors)
    assert all(isinstance(p, MessageError) for p in problems)
