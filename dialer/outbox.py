"""The outbox: events written in the same transaction as the change they report.

The notifier delivers them as webhooks; because the row commits with the
state change or not at all, no state change goes unreported and no report
describes a change that was rolled back.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from dialer.ids import new_id

__all__ = ["EVENT_TYPES", "write_event"]

EVENT_TYPES = (
    "call.completed",
    "record.completed",
    "list.completed",
    "workflow.status_changed",
    "recording.available",
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
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {event_type!r}")
    event_id = new_id()
    await conn.execute(
        """INSERT INTO outbox (tenant_id, event_id, event_type, record_id, workflow_id, payload)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        tenant_id,
        event_id,
        event_type,
        record_id,
        workflow_id,
        {"type": event_type, "id": str(event_id), "data": payload},
    )
    return event_id
