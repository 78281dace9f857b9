"""Seats: how many answered calls a workflow serves at once, shared by every worker.

A seat is a voicebot slot now (a human agent later). Pacing dials more calls
than there are seats; a live answer (AMD said human, or AMD is off) then
claims a seat. One that finds none free within ``pacing.max_wait_s`` (2 s by
default, the FCC's figure) is *abandoned*: it hears a short identification
message, is hung up, and ends with disposition ``abandoned``, which the
scheduler counts against the workflow's abandonment target. The message
offers a key (``opt_out_digit``, 9 by default) and, when the workflow sets
one, a number to call, by which the person asks not to be called again; a
press puts the number on the tenant's do-not-call list and ends the call
(47 CFR 64.1200(a)(7)(i)).

A claim is a row in ``seats`` keyed by call id. It is inserted under a
per-workflow advisory transaction lock, and only while fewer than the
workflow's ``pacing.seats`` rows of calls not yet ended exist, so workers on
any number of machines never hand out more seats than there are. The runner
deletes the row when the call ends; the scheduler deletes the rows of a lost
worker's calls. A row whose call has ended counts for nothing even if its
delete was lost (the database was away), so a seat never leaks.

:class:`SeatRules` (from a workflow's settings) and :func:`abandon_text` are
pure; :class:`SeatBook` is the database edge.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import phonenumbers

from dialer.batching import Batcher
from dialer.db import DATABASE_AWAY

__all__ = [
    "DEFAULT_ABANDON_MESSAGE",
    "DEFAULT_MAX_WAIT_S",
    "DEFAULT_OPT_OUT_DIGIT",
    "DEFAULT_SEATS",
    "SEAT_ERRORS",
    "SeatBook",
    "SeatRules",
    "abandon_text",
    "spoken_number",
]

DEFAULT_SEATS = 10
# 47 CFR 64.1200(a)(7)(i): a call is abandoned when it is not connected to a
# live agent within two seconds of the person's completed greeting.
DEFAULT_MAX_WAIT_S = 2.0
# Short on purpose: who is calling and how not to be called again, then the line is freed.
DEFAULT_ABANDON_MESSAGE = (
    "This is an automated call from {company}. We will call you back.{opt_out_clause} Goodbye."
)
DEFAULT_OPT_OUT_DIGIT = "9"
# Rules are read again after this long: a settings edit applies within seconds.
RULES_TTL_S = 5.0
# How often a waiting answer asks again for a seat.
POLL_S = 0.1
# What a claim or a release may raise while the database is away or failing.
SEAT_ERRORS = (asyncpg.PostgresError, *DATABASE_AWAY)


def abandon_text(
    template: str,
    company: str,
    *,
    opt_out_digit: str | None = DEFAULT_OPT_OUT_DIGIT,
    callback_number: str | None = None,
) -> str:
    """The message an abandoned call hears, its placeholders filled in.

    ``{company}``, ``{opt_out_digit}``, ``{callback_number}`` (spoken digit by
    digit) and ``{opt_out_clause}``: the sentence that says how not to be
    called again, by the key, the number or both, empty with neither. A
    message that names neither the clause nor the key gets the clause at its
    end.
    """
    key = _spoken_key(opt_out_digit) if opt_out_digit else ""
    number = spoken_number(callback_number) if callback_number else ""
    ways = [f"press {key} now" if key else "", f"call {number}" if number else ""]
    clause = ", or ".join(way for way in ways if way)
    if clause and not any(p in template for p in ("{opt_out_clause}", "{opt_out_digit}")):
        # A message of the workflow's own that does not say how to opt out: the
        # key listens all the same, so the person is told of it, at the end.
        template = template.rstrip() + "{opt_out_clause}"
    for name, value in (
        ("{company}", company),
        ("{opt_out_digit}", key),
        ("{callback_number}", number),
        ("{opt_out_clause}", f" To ask us not to call you again, {clause}." if clause else ""),
    ):
        template = template.replace(name, value)
    return template.strip()


def spoken_number(phone: str) -> str:
    """A phone number as speech reads it best: its national groups, digit by digit.

    "+15551234567" becomes "5 5 5, 1 2 3, 4 5 6 7": a text-to-speech engine
    reads "555" as "five hundred and fifty-five".
    """
    try:
        parsed = phonenumbers.parse(phone, None)
        national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    except phonenumbers.NumberParseException:
        national = phone
    return ", ".join(" ".join(group) for group in re.findall(r"\d+", national))


def _spoken_key(key: str) -> str:
    return {"*": "star", "#": "pound"}.get(key, key)


@dataclass(frozen=True, slots=True)
class SeatRules:
    """A workflow's seats, how long an answer may wait for one, and what it hears if none."""

    seats: int = DEFAULT_SEATS
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    abandon_message: str = abandon_text(DEFAULT_ABANDON_MESSAGE, "us")
    # The key that asks not to be called again while the message plays; None: none.
    opt_out_digit: str | None = DEFAULT_OPT_OUT_DIGIT

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None, company: str) -> SeatRules:
        """Read validated workflow settings (``pacing.seats``, ``pacing.max_wait_s``,
        ``abandon_message``, ``opt_out_digit``, ``callback_number``)."""
        settings = settings or {}
        pacing = settings.get("pacing") or {}
        digit = settings.get("opt_out_digit", DEFAULT_OPT_OUT_DIGIT) or None
        return cls(
            seats=int(pacing.get("seats", DEFAULT_SEATS)),
            max_wait_s=float(pacing.get("max_wait_s", DEFAULT_MAX_WAIT_S)),
            abandon_message=abandon_text(
                settings.get("abandon_message") or DEFAULT_ABANDON_MESSAGE,
                company,
                opt_out_digit=digit,
                callback_number=settings.get("callback_number") or None,
            ),
            opt_out_digit=digit,
        )


class SeatBook:
    """Seats in PostgreSQL: claimed on a live answer, released when the call ends."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
        linger_s: float = 0.005,
    ) -> None:
        self.pool = pool
        self.poll_s = poll_s
        self.clock = clock
        # workflow id -> (read at, rules): one read per workflow every few seconds,
        # not one per answer.
        self._rules: dict[str, tuple[float, SeatRules]] = {}
        # Answers and hang-ups that come within linger_s share a round trip (the
        # wait is small beside the max_wait_s an answer may wait for its seat).
        self._claims: Batcher[tuple[uuid.UUID, uuid.UUID, int], bool] = Batcher(
            self._claim_many, max_size=200, linger_s=linger_s
        )
        self._releases: Batcher[uuid.UUID, None] = Batcher(
            self._release_many, max_size=500, linger_s=linger_s
        )

    async def rules(self, workflow_id: str) -> SeatRules:
        """The workflow's current seat rules (an edit applies within ``RULES_TTL_S``)."""
        now = self.clock()
        cached = self._rules.get(workflow_id)
        if cached is not None and now - cached[0] < RULES_TTL_S:
            return cached[1]
        rules = await self._read_rules(workflow_id)
        if len(self._rules) > 10_000:  # bounded: workflows come and go
            self._rules.clear()
        self._rules[workflow_id] = (now, rules)
        return rules

    async def _read_rules(self, workflow_id: str) -> SeatRules:
        row = await self.pool.fetchrow(
            """SELECT v.settings, coalesce(v.settings->>'company_name', t.name) AS company
               FROM workflows w
               JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = w.current_version
               JOIN tenants t ON t.id = w.tenant_id
               WHERE w.id = $1""",
            uuid.UUID(workflow_id),
        )
        if row is None:
            return SeatRules()
        return SeatRules.from_settings(row["settings"], row["company"])

    async def try_claim(self, call_id: str, workflow_id: str, seats: int) -> bool:
        """Take a seat for ``call_id`` if one is free now; True if it holds one.

        Claims asked for together go in one round trip per workflow:
        ``claim_seats`` (migration 0008) takes the workflow's advisory lock,
        then counts and inserts in a statement of its own, whose snapshot sees
        every claim committed before the lock was granted.
        """
        return await self._claims.submit((uuid.UUID(call_id), uuid.UUID(workflow_id), seats))

    async def _claim_many(self, claims: Sequence[tuple[uuid.UUID, uuid.UUID, int]]) -> list[bool]:
        groups: dict[tuple[uuid.UUID, int], list[uuid.UUID]] = {}
        for call_id, workflow_id, seats in claims:
            groups.setdefault((workflow_id, seats), []).append(call_id)
        granted: set[tuple[uuid.UUID, uuid.UUID]] = set()
        # One statement (its own transaction) per workflow: a transaction never
        # holds two workflows' locks, so workers cannot deadlock on them.
        for (workflow_id, seats), call_ids in groups.items():
            rows = await self.pool.fetch(
                "SELECT claim_seats($1::uuid[], $2, $3) AS call_id", call_ids, workflow_id, seats
            )
            granted.update((workflow_id, r["call_id"]) for r in rows)
        return [(workflow_id, call_id) in granted for call_id, workflow_id, _ in claims]

    async def claim(
        self,
        call_id: str,
        workflow_id: str,
        rules: SeatRules,
        gone: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Ask for a seat until one is free or ``rules.max_wait_s`` has passed.

        ``gone()`` says the callee hung up meanwhile: stop asking. Database
        errors propagate: the caller decides what an unknown answer means.
        """
        deadline = self.clock() + rules.max_wait_s
        while True:
            if await self.try_claim(call_id, workflow_id, rules.seats):
                return True
            left = deadline - self.clock()
            if left <= 0 or gone():
                return False
            await asyncio.sleep(min(self.poll_s, left))

    async def release(self, call_id: str) -> None:
        """Free the call's seat (safe to call twice, or for a call that held none).

        Releases asked for together go in one statement."""
        await self._releases.submit(uuid.UUID(call_id))

    async def release_many(self, call_ids: list[str]) -> None:
        await self._release_many([uuid.UUID(c) for c in call_ids])

    async def _release_many(self, call_ids: Sequence[uuid.UUID]) -> list[None]:
        await self.pool.execute("DELETE FROM seats WHERE call_id = ANY($1::uuid[])", call_ids)
        return [None] * len(call_ids)
