"""The messages that cross the queue: dial jobs and call events.

A dial job's message id is its call id: the call row in PostgreSQL, created
by the scheduler before the job is published, decides whether a delivery may
dial (only a call still ``queued`` may), so a redelivered or republished job
never rings anybody twice.

Events are coalesced per call: a worker publishes progress events (dialing,
ringing, answered, amd) for the live view, and one ``ended`` event carrying
every figure of the call, which is the one the scheduler acts on.

Across calls, ``ended`` events that a worker has ready together travel in one
message (a JSON array of events, `encode_events`): a persistent, confirmed
message costs the broker and both ends far more than its body, and one of
them per call was a third of what the broker did in the pipeline. A message
holding one event (a JSON object) reads the same (`decode_events`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from dialer import jsonutil
from dialer.sip.slot_init import slot_init

__all__ = [
    "EVENT_KINDS",
    "CallEvent",
    "DialJob",
    "MessageError",
    "decode_events",
    "encode_events",
]

EVENT_KINDS = ("dialing", "ringing", "early_media", "answered", "amd", "dtmf", "ended")


class MessageError(ValueError):
    """A message body we cannot read: dead-letter it, do not crash on it."""


def _dumps(message: DialJob | CallEvent) -> bytes:
    """The message as JSON: orjson reads the dataclass itself, ~15x cheaper than
    ``asdict`` and a copy; what orjson refuses (integers wider than 64 bits,
    non-string keys) takes the stdlib path through ``asdict``."""
    try:
        return orjson.dumps(message)
    except TypeError:
        return jsonutil.dumps_bytes(asdict(message))


@slot_init
@dataclass(frozen=True, slots=True)
class DialJob:
    call_id: str
    record_id: str
    tenant_id: str
    workflow_id: str
    node_id: str
    phone_e164: str
    attempt: int = 1
    ring_timeout_s: float = 30.0
    max_duration_s: float = 3600.0
    handler: dict[str, Any] = field(default_factory=dict)
    amd: dict[str, Any] = field(default_factory=dict)
    record: bool = False
    # What a handler may need about the person: names, placeholders, meta.
    context: dict[str, Any] = field(default_factory=dict)
    # Unix time after which the job must not dial (the calling window closed).
    not_after: float | None = None
    # The tenant's trunk to dial through (by name); None: the worker's default.
    trunk: str | None = None

    def to_bytes(self) -> bytes:
        return _dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> DialJob:
        try:
            raw = jsonutil.loads(data)
            return cls(**raw)
        except (ValueError, TypeError) as exc:
            raise MessageError(f"not a dial job: {exc}") from None


@slot_init
@dataclass(frozen=True, slots=True)
class CallEvent:
    call_id: str
    record_id: str
    tenant_id: str
    workflow_id: str
    kind: str
    at: float
    worker_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def routing_key(self) -> str:
        return f"call.{self.kind}"

    def to_bytes(self) -> bytes:
        return _dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> CallEvent:
        try:
            raw = jsonutil.loads(data)
        except ValueError as exc:
            raise MessageError(f"not a call event: {exc}") from None
        return cls.from_json(raw)

    @classmethod
    def from_json(cls, raw: object) -> CallEvent:
        """An event from its decoded JSON (or MessageError)."""
        if not isinstance(raw, dict):
            raise MessageError(f"not a call event: a JSON {type(raw).__name__}")
        try:
            event = cls(**raw)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"not a call event: {exc}") from None
        if event.kind not in EVENT_KINDS:
            raise MessageError(f"unknown call event kind {event.kind!r}")
        return event


def encode_events(events: Sequence[CallEvent]) -> bytes:
    """Events as one message body: the event itself when alone, else an array."""
    if len(events) == 1:
        return _dumps(events[0])
    try:
        return orjson.dumps(events)
    except TypeError:
        return jsonutil.dumps_bytes([asdict(event) for event in events])


def decode_events(data: bytes) -> tuple[list[CallEvent], list[MessageError]]:
    """The events of a message body, and an error for each element it could not read.

    A body that is not JSON, or neither an event nor an array, is one error.
    """
    try:
        raw = jsonutil.loads(data)
    except ValueError as exc:
        return [], [MessageError(f"not a call event: {exc}")]
    items = raw if isinstance(raw, list) else [raw]
    events: list[CallEvent] = []
    errors: list[MessageError] = []
    for item in items:
        try:
            events.append(CallEvent.from_json(item))
        except MessageError as exc:
            errors.append(exc)
    if not items:
        errors.append(MessageError("an empty array of call events"))
    return events, errors
