"""The outbox: events written in the same transaction as the change they report.

The notifier delivers them as webhooks; because the row commits with the
state change or not at all, no state change goes unreported and no report
describes a change that was rolled back.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from dialer import jsonutil
from dialer.ids import new_id

__all__ = ["EVENT_TYPES", "OutboxRow", "outbox_row", "write_event", "write_events"]

EVENT_TYPES = (
    "call.completed",
    "record.completed",
    "list.completed",
    "workflow.status_changed",
    "recording.available",
)


# tenant_id, event_id, event_type, record_id, workflow_id, payload
OutboxRow = tuple[uuid.UUID, uuid.UUID, str, uuid.UUID | None, uuid.UUID | None, dict[str, Any]]


def outbox_row(
    *,
    tenant_id: uuid.UUID,
    event_type: str,
    payload: dict[str, Any],
    record_id: uuid.UUID | None = None,
    workflow_id: uuid.UUID | None = None,
) -> OutboxRow:
    """One outbox row, checked and wrapped, for :func:`write_events`."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {event_type!r}")
    event_id = new_id()
    return (
        tenant_id,
        event_id,
        event_type,
        record_id,
        workflow_id,
        {"type": event_type, "id": str(event_id), "data": payload},
    )


async def write_events(conn: asyncpg.Connection, rows: list[OutboxRow]) -> None:
    """Insert many outbox rows in one statement, in the order given.

    Ids are drawn in that order, so a record's events keep their order for the
    notifier (it delivers a record's events in outbox order), and the outbox's
    statement trigger wakes the notifiers once for all of them.
    """
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    # As text: asyncpg would take a JSON list inside an array parameter for a dimension.
    columns[5] = tuple(jsonutil.dumps(payload) for payload in columns[5])
    await conn.execute(
        """INSERT INTO outbox (tenant_id, event_id, event_type, record_id, workflow_id, payload)
           SELECT t, e, k, r, w, p::json
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::text[])
                WITH ORDINALITY AS u(t, e, k, r, w, p, n)
           ORDER BY n""",
        *(list(column) for column in columns),
    )


async def write_event(
    conn: asyncpg.Connection,
    *,
    tenant_id: uuid.UUID,
    event_type: str,
    payload: dict[str, Any],
    record_id: uuid.UUID | None = None,
    workflow_id: uuid.UUID | None = None,
) -> uuid.UUID:
    row = outbox_row(
        tenant_id=tenant_id,
        event_type=event_type,
        payload=payload,
        record_id=record_id,
        workflow_id=workflow_id,
    )
    await conn.execute(
        """INSERT INTO outbox (tenant_id, event_id, event_type, record_id, workflow_id, payload)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        *row,
    )
    return row[1]
