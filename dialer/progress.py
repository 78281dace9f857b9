"""Call progress for the operators' live view: dialling, ringing, answered, AMD verdicts.

These are not webhooks (the outbox carries what customers' systems must
get, once each); they are the moment-to-moment picture an operator watches.
They go out as PostgreSQL notifications on ``CHANNEL`` in the transaction
that records them on the call, so every API process hears every worker's
calls, and a rolled-back change is never shown.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dialer import jsonutil

__all__ = ["CHANNEL", "notify_progress", "parse_progress"]

CHANNEL = "dialer_live"
# PostgreSQL refuses a notification payload of 8000 bytes or more.
MAX_PAYLOAD = 7900


async def notify_progress(
    conn: asyncpg.Connection, tenant_id: Any, event_type: str, data: dict[str, Any]
) -> None:
    payload = jsonutil.dumps({"tenant_id": str(tenant_id), "type": event_type, "data": data})
    if len(payload) < MAX_PAYLOAD:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)


def parse_progress(payload: str) -> tuple[str, str, dict[str, Any]] | None:
    """``(tenant_id, type, data)`` of a notification, or None when it is not one of ours."""
    try:
        message = jsonutil.loads(payload)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    tenant, kind, data = message.get("tenant_id"), message.get("type"), message.get("data")
    if not isinstance(tenant, str) or not isinstance(kind, str) or not isinstance(data, dict):
        return None
    return tenant, kind, data
