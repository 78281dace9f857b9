"""Twilio-style hang-ups for calls held by other worker processes, relayed through PostgreSQL.

A bot may end its call with ``POST .../Calls/{CallSid}.json`` (Status=completed)
against the API, but the call lives in whichever worker process placed it.
Worker processes announce the calls they can hang up (``AnnouncingCallControl``);
the API process keeps a ``RelayedCallControl`` whose entries for those calls
hang up by asking the owning worker. Both directions are PostgreSQL
notifications on ``CHANNEL``, so it works across processes and machines, with
the ``media.voicebot.calls_handler`` answering exactly as for a local call.

An API process that starts after a call was announced does not know it (the
call answers 404 there); calls are short, and the next ones are known.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg

from dialer import jsonutil
from dialer.pg_listen import ChannelListener
from media.call_control import CallControl

__all__ = ["CHANNEL", "AnnouncingCallControl", "RelayedCallControl"]

log = logging.getLogger(__name__)

CHANNEL = "dialer_call_control"


class _Notifier:
    """Sends notifications from tasks it owns, so callers need not await."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, jsonutil.dumps(message))
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("could not relay a call-control message: %s", exc)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _listener(pool: asyncpg.Pool, on_message: Callable[[dict[str, Any]], None]) -> ChannelListener:
    def heard(payload: str) -> None:
        try:
            message = jsonutil.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict):
            on_message(message)

    return ChannelListener(pool, CHANNEL, heard)


class AnnouncingCallControl(CallControl):
    """A worker process's calls, announced to API processes; their hang-ups heard back."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__()
        self.owner = f"w-{secrets.token_hex(6)}"
        self._notifier = _Notifier(pool)
        self._listener = _listener(pool, self._heard)

    async def start(self) -> None:
        await self._listener.start()

    def register(self, call_sid: str, account_sid: str, hangup: Callable[[], None]) -> None:
        super().register(call_sid, account_sid, hangup)
        self._notifier.send(
            {"op": "register", "call_sid": call_sid, "account_sid": account_sid,
             "owner": self.owner}
        )  # fmt: skip

    def unregister(self, call_sid: str) -> None:
        super().unregister(call_sid)
        self._notifier.send({"op": "unregister", "call_sid": call_sid, "owner": self.owner})

    def _heard(self, message: dict[str, Any]) -> None:
        if message.get("op") != "hangup" or message.get("owner") != self.owner:
            return
        call_sid, account_sid = message.get("call_sid"), message.get("account_sid")
        if isinstance(call_sid, str) and isinstance(account_sid, str):
            self.update(account_sid, call_sid, {"Status": "completed"})

    async def close(self) -> None:
        await self._listener.close()
        await self._notifier.close()


class RelayedCallControl(CallControl):
    """The API process's view: its own calls, plus every worker process's announced ones."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__()
        self._notifier = _Notifier(pool)
        self._listener = _listener(pool, self._heard)
        self._remote: dict[str, str] = {}  # call_sid -> owner

    async def start(self) -> None:
        await self._listener.start()

    def _heard(self, message: dict[str, Any]) -> None:
        op, call_sid, owner = message.get("op"), message.get("call_sid"), message.get("owner")
        if not isinstance(call_sid, str) or not isinstance(owner, str):
            return
        if op == "register" and isinstance(message.get("account_sid"), str):
            account_sid = message["account_sid"]
            self._remote[call_sid] = owner

            def hangup() -> None:
                self._remote.pop(call_sid, None)
                self._notifier.send(
                    {"op": "hangup", "call_sid": call_sid, "account_sid": account_sid,
                     "owner": owner}
                )  # fmt: skip

            super().register(call_sid, account_sid, hangup)
        elif op == "unregister" and self._remote.get(call_sid) == owner:
            del self._remote[call_sid]
            super().unregister(call_sid)

    async def close(self) -> None:
        await self._listener.close()
        await self._notifier.close()
