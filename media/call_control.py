"""The Twilio-compatible hang-up endpoint: ``POST .../Calls/{CallSid}.json``.

Bots written for Twilio hang up through its REST API (``Status=completed``);
``CallControl`` keeps the live calls by CallSid and ``calls_handler`` answers
that request in Twilio's shape. Bookkeeping only: the voicebot stream
registers its call and the hang-up it wants called.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["CALLS_ROUTE", "CallControl", "CallUpdate", "calls_handler"]

CALLS_ROUTE = "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"
_ENDING_STATUSES = frozenset({"completed", "canceled"})


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """The answer to ``POST .../Calls/{CallSid}.json``: HTTP status and JSON body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Registered:
    account_sid: str
    hangup: Callable[[], None]


def _twilio_error(status: int, code: int | None, message: str) -> CallUpdate:
    return CallUpdate(status, {"code": code, "message": message, "status": status})


class CallControl:
    """Live calls by CallSid, so a bot can hang up through Twilio's REST shape.

    Pure bookkeeping: ``register`` when the stream starts, ``unregister`` when
    the call ends; ``update`` decides the answer and calls the hang-up.
    """

    def __init__(self) -> None:
        self._calls: dict[str, _Registered] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def register(self, call_sid: str, account_sid: str, hangup: Callable[[], None]) -> None:
        """Make ``call_sid`` answerable; ``hangup()`` must not await."""
        self._calls[call_sid] = _Registered(account_sid, hangup)

    def unregister(self, call_sid: str) -> None:
        """Forget a call (idempotent)."""
        self._calls.pop(call_sid, None)

    def update(self, account_sid: str, call_sid: str, form: Mapping[str, str]) -> CallUpdate:
        """Apply a call update: ``Status=completed`` (or ``canceled``) hangs up."""
        entry = self._calls.get(call_sid)
        if entry is None or entry.account_sid != account_sid:
            # Twilio's code for a resource that does not exist (any more).
            return _twilio_error(
                404, 20404, f"The requested resource /Calls/{call_sid}.json was not found"
            )
        status = form.get("Status")
        if status is None or status.lower() not in _ENDING_STATUSES:
            return _twilio_error(
                400, None, "only Status=completed (or canceled) is supported on this call"
            )
        del self._calls[call_sid]
        entry.hangup()
        return CallUpdate(200, {"sid": call_sid, "account_sid": account_sid, "status": "completed"})


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        login, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None


def calls_handler(
    control: CallControl,
    *,
    check_auth: Callable[[str, str, str], bool | Awaitable[bool]] | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for ``POST`` on ``CALLS_ROUTE`` (mount it under any prefix).

    ``check_auth(account_sid, login, password)`` judges the HTTP Basic
    credentials (Twilio's: AccountSid or API key, and a token); pass ``None``
    only where the network already is the boundary.
    """

    async def handle(request: web.Request) -> web.Response:
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info["call_sid"]
        if check_auth is not None:
            credentials = _basic_auth(request.headers.get("Authorization"))
            allowed = False
            if credentials is not None:
                verdict = check_auth(account_sid, *credentials)
                allowed = bool(await verdict if isinstance(verdict, Awaitable) else verdict)
            if not allowed:
                answer = _twilio_error(401, 20003, "Authenticate")
                return web.json_response(
                    answer.body,
                    status=answer.status,
                    headers={"WWW-Authenticate": 'Basic realm="dialer"'},
                )
        form = await request.post()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        answer = control.update(account_sid, call_sid, fields)
        return web.json_response(answer.body, status=answer.status)

    return handle
