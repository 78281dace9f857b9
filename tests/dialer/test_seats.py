"""Seats: the rules from settings, race-free claims in PostgreSQL, release, and loss."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Sequence

import asyncpg
import pytest

from dialer.bus import Broker
from dialer.ids import new_id
from dialer.seats import (
    DEFAULT_ABANDON_MESSAGE,
    DEFAULT_OPT_OUT_DIGIT,
    SeatBook,
    SeatRules,
    abandon_text,
    spoken_number,
)
from scheduler import engine
from scheduler.consumer import EventConsumer
from scheduler.definition import DefinitionError, validate_settings
from scheduler.engine import Scheduler
from scheduler.pacing import PacingDecision, PacingPolicy, PacingStats, pace
from tests.conftest import Tenant, make_tenant
from tests.scheduler.test_engine import NOON, SETTINGS, Clock, _records, _settle, _workflow

# -- pure --------------------------------------------------------------------


def test_rules_from_settings_defaults_and_values() -> None:
    rules = SeatRules.from_settings({}, "Acme")
    assert (rules.seats, rules.max_wait_s) == (10, 2.0)
    assert rules.abandon_message == abandon_text(DEFAULT_ABANDON_MESSAGE, "Acme")
    assert "Acme" in rules.abandon_message and "{company}" not in rules.abandon_message
    rules = SeatRules.from_settings(
        {"pacing": {"seats": 4, "max_wait_s": 0.5}, "abandon_message": "Hi from {company}. Bye."},
        "Beta",
    )
    # A message of its own that does not say how to opt out is told of the key at its end.
    assert (rules.seats, rules.max_wait_s, rules.abandon_message) == (
        4,
        0.5,
        "Hi from Beta. Bye. To ask us not to call you again, press 9 now.",
    )
    quiet = SeatRules.from_settings({"abandon_message": "Hi. Bye.", "opt_out_digit": None}, "B")
    assert quiet.abandon_message == "Hi. Bye."


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"abandon_message": 5}, "settings.abandon_message"),
        ({"abandon_message": "x" * 301}, "settings.abandon_message"),
        ({"company_name": ["Acme"]}, "settings.company_name"),
        ({"pacing": {"max_wait_s": -1}}, "settings.pacing.max_wait_s"),
        ({"pacing": {"max_wait_s": 11}}, "settings.pacing.max_wait_s"),
        ({"pacing": {"max_wait_s": "2"}}, "settings.pacing.max_wait_s"),
        ({"opt_out_digit": "99"}, "settings.opt_out_digit"),
        ({"opt_out_digit": "a"}, "settings.opt_out_digit"),
        ({"opt_out_digit": 9}, "settings.opt_out_digit"),
        ({"callback_number": "5551234567"}, "settings.callback_number"),
        ({"callback_number": "+1555"}, "settings.callback_number"),
        ({"abandon_message": "Call {callback_number}."}, "settings.abandon_message"),
        (
            {"opt_out_digit": None, "abandon_message": "Press {opt_out_digit}."},
            "settings.abandon_message",
        ),
    ],
)
def test_settings_validation_names_the_field(settings: dict, field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        validate_settings(settings)
    assert field in str(caught.value)


def test_valid_seat_settings_pass() -> None:
    settings = {
        "pacing": {"mode": "predictive", "seats": 5, "max_wait_s": 1.5},
        "abandon_message": "This is Acme. Press {opt_out_digit} or call {callback_number}.",
        "company_name": "Acme",
        "opt_out_digit": "#",
        "callback_number": "+15551234567",
    }
    assert validate_settings(settings) == settings
    assert validate_settings({"opt_out_digit": None}) == {"opt_out_digit": None}


@pytest.mark.parametrize(
    ("digit", "number", "clause"),
    [
        ("9", None, " To ask us not to call you again, press 9 now."),
        (
            "*",
            "+15551234567",
            " To ask us not to call you again, press star now, or call 5 5 5, 1 2 3, 4 5 6 7.",
        ),
        (None, "+442071838811", " To ask us not to call you again, call 0 2 0, 7 1 8 3, 8 8 1 1."),
        (None, None, ""),
    ],
)
def test_default_message_says_how_not_to_be_called_again(
    digit: str | None, number: str | None, clause: str
) -> None:
    text = abandon_text(
        DEFAULT_ABANDON_MESSAGE, "Acme", opt_out_digit=digit, callback_number=number
    )
    assert text == f"This is an automated call from Acme. We will call you back.{clause} Goodbye."


def test_rules_carry_the_opt_out_key() -> None:
    assert SeatRules.from_settings({}, "Acme").opt_out_digit == DEFAULT_OPT_OUT_DIGIT == "9"
    rules = SeatRules.from_settings({"opt_out_digit": None, "callback_number": "+15551234567"}, "A")
    assert rules.opt_out_digit is None
    assert "press" not in rules.abandon_message and "5 5 5, 1 2 3" in rules.abandon_message
    custom = SeatRules.from_settings(
        {"abandon_message": "{company}: press {opt_out_digit}.", "opt_out_digit": "0"}, "Beta"
    )
    assert (custom.abandon_message, custom.opt_out_digit) == ("Beta: press 0.", "0")


def test_spoken_number_reads_digit_by_digit() -> None:
    assert spoken_number("+15551234567") == "5 5 5, 1 2 3, 4 5 6 7"
    assert spoken_number("not a number 12") == "1 2"


# -- PostgreSQL --------------------------------------------------------------


async def _calls(
    pool: asyncpg.Pool, tenant: Tenant, workflow: asyncpg.Record, count: int, state: str
) -> list[str]:
    phones = [f"21255{secrets.randbelow(10**5):05d}" for _ in range(count)]
    records = await _records(pool, tenant, workflow, phones)
    ids = []
    for record_id, phone in zip(records, phones, strict=True):
        call_id = new_id()
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            call_id,
            tenant.id,
            record_id,
            workflow["id"],
            f"+1{phone}",
            state,
        )
        ids.append(str(call_id))
    return ids


async def test_concurrent_claims_never_exceed_the_seats(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "seat")
    workflow = await _workflow(pool, tenant)
    calls = await _calls(pool, tenant, workflow, 12, "answered")
    book = SeatBook(pool)
    # Twelve answers at once on a pool of five connections, three seats.
    won = await asyncio.gather(*(book.try_claim(c, str(workflow["id"]), 3) for c in calls))
    assert sum(won) == 3
    assert await pool.fetchval("SELECT count(*) FROM seats WHERE workflow_id = $1", workflow["id"])
    # Another workflow's seats are its own.
    other = await _workflow(pool, tenant)
    (other_call,) = await _calls(pool, tenant, other, 1, "answered")
    assert await book.try_claim(other_call, str(other["id"]), 1)
    # A release frees the seat for the next answer.
    holder = next(c for c, ok in zip(calls, won, strict=True) if ok)
    waiting = next(c for c, ok in zip(calls, won, strict=True) if not ok)
    assert not await book.try_claim(waiting, str(workflow["id"]), 3)
    await book.release(holder)
    await book.release(holder)  # twice is harmless
    assert await book.try_claim(waiting, str(workflow["id"]), 3)


async def test_claims_asked_together_share_a_round_trip_per_workflow(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "seat")
    first, second = await _workflow(pool, tenant), await _workflow(pool, tenant)
    a = await _calls(pool, tenant, first, 4, "answered")
    b = await _calls(pool, tenant, second, 3, "answered")
    book = SeatBook(pool)
    assert await book.try_claim(a[0], str(first["id"]), 2)  # held before the batch
    asks = [(c, first, 2) for c in a] + [(c, second, 2) for c in b] + [(a[1], first, 2)]
    won = await asyncio.gather(*(book.try_claim(c, str(w["id"]), n) for c, w, n in asks))
    # The holder keeps its seat, the first other asker takes the last one, in order;
    # a call asking twice in one batch holds one seat, not two.
    assert won == [True, True, False, False, True, True, False, True]
    assert book._claims.batches == 2
    held = await pool.fetch("SELECT call_id::text, workflow_id FROM seats")
    assert sorted(r["call_id"] for r in held if r["workflow_id"] == first["id"]) == sorted(a[:2])
    assert sorted(r["call_id"] for r in held if r["workflow_id"] == second["id"]) == sorted(b[:2])
    await asyncio.gather(*(book.release(c) for c in a + b))
    assert (
        await pool.fetchval("SELECT count(*) FROM seats WHERE workflow_id = $1", first["id"]) == 0
    )


async def test_a_seat_of_an_ended_call_counts_for_nothing(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "seat")
    workflow = await _workflow(pool, tenant)
    first, second = await _calls(pool, tenant, workflow, 2, "answered")
    book = SeatBook(pool)
    assert await book.try_claim(first, str(workflow["id"]), 1)
    assert not await book.try_claim(second, str(workflow["id"]), 1)
    # Its release was lost (say the database was away), but the call ended.
    await pool.execute("UPDATE calls SET state = 'ended' WHERE id = $1::uuid", first)
    assert await book.try_claim(second, str(workflow["id"]), 1)


async def test_claim_waits_for_a_seat_up_to_max_wait(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "seat")
    workflow = await _workflow(pool, tenant)
    holder, late, later = await _calls(pool, tenant, workflow, 3, "answered")
    book = SeatBook(pool, poll_s=0.05)
    rules = SeatRules(seats=1, max_wait_s=2.0)
    assert await book.claim(holder, str(workflow["id"]), rules)

    async def release_soon() -> None:
        await asyncio.sleep(0.4)
        await book.release(holder)

    started = time.monotonic()
    releaser = asyncio.create_task(release_soon())
    assert await book.claim(late, str(workflow["id"]), rules)
    await releaser
    assert 0.3 < time.monotonic() - started < 1.5
    # Nobody releases now: no seat within the wait.
    started = time.monotonic()
    assert not await book.claim(later, str(workflow["id"]), SeatRules(seats=1, max_wait_s=0.5))
    assert 0.45 < time.monotonic() - started < 1.5
    # A callee who hangs up stops the wait at once.
    started = time.monotonic()
    assert not await book.claim(later, str(workflow["id"]), rules, gone=lambda: True)
    assert time.monotonic() - started < 0.5


async def test_rules_come_from_the_current_version(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "seat")
    settings = {
        **SETTINGS,
        "pacing": {"mode": "predictive", "seats": 2, "max_wait_s": 1.0},
        "company_name": "Acme Ltd",
    }
    workflow = await _workflow(pool, tenant, settings)
    rules = await SeatBook(pool).rules(str(workflow["id"]))
    assert (rules.seats, rules.max_wait_s) == (2, 1.0)
    assert rules.abandon_message.startswith("This is an automated call from Acme Ltd.")
    plain = await _workflow(pool, tenant)
    rules = await SeatBook(pool).rules(str(plain["id"]))
    assert tenant.name in rules.abandon_message and rules.seats == 3


async def test_lost_worker_calls_release_their_seats(pool: asyncpg.Pool, broker: Broker) -> None:
    tenant = await make_tenant(pool, "seat")
    workflow = await _workflow(pool, tenant)
    (record_id,) = await _records(pool, tenant, workflow, ["2125550391"])
    clock = Clock(NOON)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    try:
        assert (await scheduler.tick()).published == 1
        call_id = await pool.fetchval("SELECT last_call_id FROM records WHERE id = $1", record_id)
        dead = f"w-dead-{secrets.token_hex(3)}"
        await pool.execute(
            "INSERT INTO workers (id, last_seen_at) VALUES ($1, now() - interval '1 minute')", dead
        )
        await pool.execute(
            "UPDATE calls SET state = 'answered', worker_id = $2 WHERE id = $1", call_id, dead
        )
        assert await SeatBook(pool).try_claim(str(call_id), str(workflow["id"]), 1)
        clock.now = NOON + 60
        assert (await scheduler.tick()).lost == 1
        assert not await pool.fetchval("SELECT count(*) FROM seats WHERE call_id = $1", call_id)
        await _settle(pool, "SELECT state = 'ended' FROM calls WHERE id = $1", call_id)
    finally:
        await consumer.close()


async def test_abandoned_calls_count_against_live_answers_only(
    pool: asyncpg.Pool, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pacer's window: abandoned over live answers (machines are not people waiting);
    its target and its wait come from the workflow's settings."""
    tenant = await make_tenant(pool, "seat")
    pacing = {"mode": "predictive", "seats": 2, "abandon_target": 0.05, "max_wait_s": 1.0}
    settings = {**SETTINGS, "pacing": pacing}
    workflow = await _workflow(pool, tenant, settings)
    dispositions = ["human"] * 10 + ["abandoned"] * 2 + ["machine"] * 30
    ended = await _calls(pool, tenant, workflow, len(dispositions), "ended")
    await pool.execute(
        """UPDATE calls SET dialing_at = now() - interval '60 seconds',
               answered_at = now() - interval '50 seconds', ended_at = now(),
               disposition = ($2::text[])[array_position($1::uuid[], id)]
           WHERE id = ANY($1::uuid[])""",
        [uuid.UUID(c) for c in ended],
        dispositions,
    )
    seen: list[tuple[PacingPolicy, PacingStats]] = []

    def spy(
        policy: PacingPolicy,
        stats: PacingStats,
        now: float,
        cancellable: Sequence[bool] | None = None,
    ) -> PacingDecision:
        seen.append((policy, stats))
        return pace(policy, stats, now, cancellable)

    monkeypatch.setattr(engine, "pace", spy)
    scheduler = Scheduler(pool, broker, tenant_ids=[tenant.id])
    await scheduler.tick()
    (policy, stats), *_ = seen
    assert (stats.window_live, stats.window_abandoned) == (12, 2)
    assert stats.target_abandon_rate == 0.05
    assert policy.max_wait_s == 1.0
