"""One pool connection LISTENing on a PostgreSQL channel, for as long as it is open."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

__all__ = ["ChannelListener"]


class ChannelListener:
    """Calls ``on_payload(payload)`` for each notification on ``channel`` (never awaits)."""

    def __init__(self, pool: asyncpg.Pool, channel: str, on_payload: Callable[[str], None]) -> None:
        self.pool = pool
        self.channel = channel
        self.on_payload = on_payload
        self._conn: Any = None

    @property
    def listening(self) -> bool:
        if self._conn is None:
            return False
        try:
            return not self._conn.is_closed()
        except asyncpg.InterfaceError:
            # The pool took the connection back (it was lost, or the pool reset).
            return False

    async def start(self) -> None:
        if self.listening:
            return
        # A connection lost with the server goes back to the pool, which replaces it.
        await self.close()
        self._conn = await self.pool.acquire()
        try:
            await self._conn.add_listener(self.channel, self._heard)
        except BaseException:
            # Not listening: give the connection back, so that `listening` says so.
            await self.close()
            raise

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.on_payload(payload)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.remove_listener(self.channel, self._heard)
            with contextlib.suppress(Exception):
                await self.pool.release(self._conn)
            self._conn = None
