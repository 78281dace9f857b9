"""The pacer's requests to hang up calls that are still ringing, as PostgreSQL notifications.

The scheduler decides (``scheduler.pacing``, rule 5) and notifies on `CHANNEL`
in the transaction that marks the calls (``calls.pacing_cancel_at``), so a
request goes out only if the mark is committed. Every worker hears every
request and acts on the calls it is running; a request for a call that has
meanwhile been answered or ended changes nothing. A lost notification (a
worker reconnecting) costs only that call ringing on to its end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import asyncpg

from dialer import jsonutil
from dialer.pg_listen import ChannelListener

__all__ = ["CHANNEL", "TakeBackListener", "call_ids", "payloads"]

log = logging.getLogger(__name__)

CHANNEL = "dialer_pacing_cancel"
# PostgreSQL refuses a payload of 8,000 bytes or more.
_MAX_PAYLOAD = 7000


def payloads(ids: Iterable[str]) -> list[str]:
    """The notifications carrying ``ids`` (JSON arrays, each under the payload limit)."""
    out: list[str] = []
    chunk: list[str] = []
    size = 2
    for call_id in ids:
        if chunk and size + len(call_id) + 3 > _MAX_PAYLOAD:
            out.append(jsonutil.dumps(chunk))
            chunk, size = [], 2
        chunk.append(call_id)
        size += len(call_id) + 3
    if chunk:
        out.append(jsonutil.dumps(chunk))
    return out


def call_ids(payload: str) -> list[str]:
    """The call ids in one notification; nothing for a payload that is not a list of strings."""
    try:
        message = jsonutil.loads(payload)
    except ValueError:
        return []
    if not isinstance(message, list):
        return []
    return [item for item in message if isinstance(item, str)]


class TakeBackListener:
    """Hears take-back requests and passes each call id to ``on_call_id``."""

    def __init__(self, pool: asyncpg.Pool, on_call_id: Callable[[str], object]) -> None:
        self.on_call_id = on_call_id
        self._listener = ChannelListener(pool, CHANNEL, self._heard)

    def _heard(self, payload: str) -> None:
        for call_id in call_ids(payload):
            try:
                self.on_call_id(call_id)
            except Exception:
                # One call's failure must not cost the others their hang-up.
                log.exception("taking back call %s failed", call_id)

    @property
    def listening(self) -> bool:
        return self._listener.listening

    async def start(self) -> None:
        await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()
