"""The notifier against a real receiver on loopback that verifies every signature."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api import webhooks
from api.app import create_app
from api.notifier import (
    SPEC_RETRY_DELAYS_S,
    AddressGuard,
    Notifier,
    NotifierConfig,
    event_body,
    judge_answer,
    parse_retry_after,
    retry_delay_s,
    signature_header,
)
from api.urlsafety import AllowList
from api.webhooks import new_secret
from dialer.db import connect_pool
from dialer.ids import new_id, new_workflow_key
from dialer.outbox import write_event
from dialer.settings import Secret, Settings
from tests import conftest
from tests.conftest import Tenant

FAST = NotifierConfig(
    retry_delays_s=(0.02, 0.02, 0.02),
    jitter=0.0,
    connect_timeout_s=0.5,
    read_timeout_s=0.25,
    total_timeout_s=0.3,
    lease_margin_s=0.2,
    poll_interval_s=0.05,
    flush_interval_s=0.001,
    stop_grace_s=0.1,
)


# ----------------------------------------------------------------------------- pure


def _vectors() -> dict[str, Any]:
    folder = conftest.testdata_dir()
    path = folder / "standard-webhooks-vectors.json" if folder else None
    if path is None or not path.is_file():
        pytest.skip("the shared Standard Webhooks vectors (../shared/testdata) are not present")
    return json.loads(path.read_text(encoding="utf-8"))


def test_signatures_match_the_shared_vectors() -> None:
    data = _vectors()
    cases = [*data["official_vectors"], *data["derived_vectors"]]
    assert len(cases) >= 4
    for case in cases:
        secrets = case.get("secrets") or [case["secret"]]
        signers = [Webhook(s) for s in secrets]
        body = case["payload"].encode("utf-8")
        header = signature_header(signers, case["webhook_id"], case["webhook_timestamp"], body)
        assert header == case["expected_webhook_signature"], case["id"]


@pytest.mark.parametrize(
    ("failed", "rand", "retry_after", "expected"),
    [
        (1, 0.5, None, 5.0),
        (2, 0.5, None, 300.0),
        (3, 0.5, None, 1800.0),
        (4, 0.5, None, 7200.0),
        (5, 0.5, None, 18000.0),
        (6, 0.5, None, 36000.0),
        (7, 0.5, None, 36000.0),
        (8, 0.5, None, None),  # eight attempts made: give up
        (0, 0.5, None, None),
        (1, 0.0, None, 4.5),  # jitter 10 %: the low end
        (1, 1.0, None, 5.5),
        (1, 0.5, 60.0, 60.0),  # Retry-After lengthens the wait
        (2, 0.5, 60.0, 300.0),  # ... but never shortens it
        (1, 0.5, 10**9, 86400.0),  # ... and is capped
    ],
)
def test_retry_schedule(
    failed: int, rand: float, retry_after: float | None, expected: float | None
) -> None:
    delay = retry_delay_s(
        failed, SPEC_RETRY_DELAYS_S, jitter=0.1, rand=rand, retry_after_s=retry_after
    )
    assert delay == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: at once
        ("soon", None),
        ("-5", None),
        (None, None),
        ("9" * 400, 1e9),  # too long for a float: the cap applies, nothing raises
        ("9" * 5000, 1e9),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = dt.datetime(2015, 10, 21, 7, 28, 0, tzinfo=dt.UTC).timestamp()
    assert parse_retry_after(value, now) == expected


@pytest.mark.parametrize(
    ("attempt", "status", "refused", "outcome", "delivery", "disable"),
    [
        (1, 200, False, "succeeded", "succeeded", False),
        (1, 204, False, "succeeded", "succeeded", False),
        (1, 302, False, "failed", "pending", False),
        (1, 500, False, "failed", "pending", False),
        (1, 429, False, "failed", "pending", False),
        (1, None, False, "failed", "pending", False),  # timeout, connection refused
        (1, None, True, "refused", "pending", False),
        (1, 410, False, "gone", "failed", True),
        (8, 500, False, "failed", "failed", False),
    ],
)
def test_judge_answer(
    attempt: int, status: int | None, refused: bool, outcome: str, delivery: str, disable: bool
) -> None:
    verdict = judge_answer(
        attempt, status, refused=refused, retry_after_s=None, config=NotifierConfig(), rand=0.5
    )
    assert (verdict.outcome, verdict.status, verdict.disable_endpoint) == (
        outcome,
        delivery,
        disable,
    )
    assert (verdict.delay_s is not None) == (delivery == "pending")


@pytest.mark.parametrize(
    ("event_type", "recording", "expected"),
    [
        ("call.completed", None, {"call_id": "c", "recording_url": None}),
        (
            "call.completed",
            {"id": "r", "url": "https://x/r", "expires_at": "2030-01-01T00:00:00+00:00"},
            {
                "call_id": "c",
                "recording_id": "r",
                "recording_url": "https://x/r",
                "recording_url_expires_at": "2030-01-01T00:00:00+00:00",
            },
        ),
        ("record.completed", None, {"call_id": "c"}),
    ],
)
def test_event_body(event_type: str, recording: dict[str, str] | None, expected: dict) -> None:
    stamp = dt.datetime(2026, 1, 5, 9, 0, 0, 123000, tzinfo=dt.UTC)
    body = event_body({"type": event_type, "id": "e1", "data": {"call_id": "c"}}, stamp, recording)
    assert json.loads(body) == {
        "type": event_type,
        "id": "e1",
        "timestamp": "2026-01-05T09:00:00.123000Z",
        "data": expected,
    }


# ----------------------------------------------------------------------------- receiver


@dataclass
class Hit:
    path: str
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    signature: str
    received_at: float


@dataclass
class Receiver:
    """An aiohttp server on loopback; every request's signature is verified."""

    modes: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, list[str]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    base: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        path = request.path
        for secret in self.secrets.get(path, []):
            try:
                Webhook(secret).verify(raw, dict(request.headers))
            except WebhookVerificationError:
                self.bad_signatures.append(path)
        hook_id = request.headers.get("webhook-id", "")
        self.hits.append(
            Hit(
                path,
                hook_id,
                int(request.headers.get("webhook-timestamp", "0")),
                json.loads(raw),
                request.headers.get("webhook-signature", ""),
                time.time(),
            )
        )
        count = self.seen[(path, hook_id)] = self.seen.get((path, hook_id), 0) + 1
        self.changed.set()
        mode = self.modes.get(path, "ok")
        if mode == "fail" or (mode == "fail_first" and count == 1):
            return web.Response(status=500, text="boom")
        if mode == "hang" or (mode == "hold" and not self.hold.is_set()):
            await self.hold.wait()
            if mode == "hang":
                return web.Response(status=200)
        if mode == "slow":
            await asyncio.sleep(0.3)
        if mode == "redirect":
            raise web.HTTPFound(f"{self.base}/redirect-target")
        if mode == "gone":
            return web.Response(status=410)
        if mode == "busy":
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=204)

    def of(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.base = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        rec.hold.set()
        await runner.cleanup()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        webhook_secret=Secret("link-key-for-tests"),
        webhook_allow_hosts=("127.0.0.0/8",),
    )


@pytest.fixture
async def big_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, min_size=1, max_size=12)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(autouse=True)
async def _quiet_endpoints(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    # Leave nothing for a later test's notifier to deliver.
    await pool.execute("UPDATE webhook_endpoints SET enabled = false")


# ----------------------------------------------------------------------------- helpers


async def add_endpoint(
    pool: asyncpg.Pool,
    tenant: Tenant,
    url: str,
    *,
    events: list[str] | None = None,
    workflow_id: uuid.UUID | None = None,
    receiver: Receiver | None = None,
) -> tuple[uuid.UUID, str]:
    endpoint_id, secret = new_id(), new_secret()
    await pool.execute(
        """INSERT INTO webhook_endpoints (id, tenant_id, workflow_id, url, events, secret)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        endpoint_id,
        tenant.id,
        workflow_id,
        url,
        events or [],
        secret,
    )
    if receiver is not None:
        receiver.secrets.setdefault(url.removeprefix(receiver.base), []).append(secret)
    return endpoint_id, secret


async def make_records(
    pool: asyncpg.Pool, tenant: Tenant, count: int
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    workflow_id = new_id()
    records = [new_id() for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO workflows (id, tenant_id, workflow_key, name) VALUES ($1, $2, $3, 'w')",
            workflow_id,
            tenant.id,
            new_workflow_key(),
        )
        await conn.executemany(
            """INSERT INTO records (id, tenant_id, workflow_id, workflow_version, phone_e164)
               VALUES ($1, $2, $3, 1, '+12125550123')""",
            [(r, tenant.id, workflow_id) for r in records],
        )
    return workflow_id, records


async def emit(
    pool: asyncpg.Pool,
    tenant: Tenant,
    workflow_id: uuid.UUID | None,
    record_id: uuid.UUID | None,
    event_type: str = "record.completed",
    data: dict[str, Any] | None = None,
) -> uuid.UUID:
    async with pool.acquire() as conn, conn.transaction():
        return await write_event(
            conn,
            tenant_id=tenant.id,
            event_type=event_type,
            payload=data or {"record_id": str(record_id)},
            record_id=record_id,
            workflow_id=workflow_id,
        )


@contextlib.asynccontextmanager
async def running(
    pool: asyncpg.Pool, settings: Settings, config: NotifierConfig = FAST, **kwargs: Any
) -> AsyncIterator[Notifier]:
    stop = asyncio.Event()
    notifier = Notifier(pool, settings, config, **kwargs)
    task = asyncio.create_task(notifier.run(stop))
    try:
        yield notifier
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll the database until ``check`` holds (the notifier writes after it answers)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def attempts_of(pool: asyncpg.Pool, endpoint_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM webhook_attempts WHERE endpoint_id = $1 ORDER BY id", endpoint_id
    )


def assert_in_order(hits: list[Hit], order: dict[str, int]) -> None:
    """Per record, the first arrival of each event follows outbox order."""
    by_record: dict[str, list[int]] = {}
    for hit in hits:
        record = hit.body["data"].get("record_id")
        position = order[hit.webhook_id]
        seen = by_record.setdefault(record, [])
        if position not in seen:
            seen.append(position)
    for record, positions in by_record.items():
        assert positions == sorted(positions), f"record {record} out of order: {positions}"


# ----------------------------------------------------------------------------- delivery


async def test_delivers_signed_events_in_order_per_record(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.modes["/all"] = "fail_first"  # every event fails once: its successors must wait
    workflow_id, records = await make_records(pool, tenant, 6)
    other_workflow, _ = await make_records(pool, tenant, 1)
    all_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/all", receiver=receiver)
    await add_endpoint(
        pool, tenant, f"{receiver.base}/completed", events=["call.completed"], receiver=receiver
    )
    await add_endpoint(
        pool, tenant, f"{receiver.base}/other", workflow_id=other_workflow, receiver=receiver
    )
    order: dict[str, int] = {}
    for step in range(4):
        for record in records:
            kind = "call.completed" if step < 3 else "record.completed"
            event = await emit(
                pool, tenant, workflow_id, record, kind, {"record_id": str(record), "step": step}
            )
            order[str(event)] = len(order)
    async with running(pool, settings):
        await receiver.wait(lambda: all(receiver.seen.get(("/all", e)) == 2 for e in order))
        await receiver.wait(lambda: len(receiver.of("/completed")) >= 18)
    assert receiver.bad_signatures == []
    hits = receiver.of("/all")
    assert {h.webhook_id for h in hits} == set(order)
    assert_in_order(hits, order)
    # Each event failed once and was retried under the same webhook-id.
    assert all(count == 2 for (path, _), count in receiver.seen.items() if path == "/all")
    assert {h.body["type"] for h in receiver.of("/completed")} == {"call.completed"}
    assert receiver.of("/other") == []
    for hit in hits:
        assert hit.body["id"] == hit.webhook_id
        assert hit.body["timestamp"].endswith("Z")
    rows = await attempts_of(pool, all_id)
    assert sorted((r["attempt"], r["outcome"], r["status_code"]) for r in rows) == sorted(
        [(1, "failed", 500)] * 24 + [(2, "succeeded", 204)] * 24
    )


@pytest.mark.parametrize(
    ("mode", "status", "error"),
    [("fail", 500, None), ("hang", None, "timed out"), ("redirect", 302, None)],
)
async def test_failing_receivers_are_retried_then_given_up(
    pool: asyncpg.Pool,
    settings: Settings,
    tenant: Tenant,
    receiver: Receiver,
    mode: str,
    status: int | None,
    error: str | None,
) -> None:
    receiver.modes[f"/{mode}"] = mode
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/{mode}", receiver=receiver)
    event = await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    config = dataclasses.replace(FAST, retry_delays_s=(0.01, 0.01))

    async def given_up() -> bool:
        return (
            await pool.fetchval(
                "SELECT status FROM webhook_deliveries WHERE endpoint_id = $1", endpoint_id
            )
            == "failed"
        )

    async with running(pool, settings, config):
        await eventually(given_up)
    rows = await attempts_of(pool, endpoint_id)
    assert [(r["attempt"], r["outcome"], r["status_code"]) for r in rows] == [
        (1, "failed", status),
        (2, "failed", status),
        (3, "failed", status),
    ]
    assert all(r["event_id"] == event for r in rows)
    if error:
        assert all(r["error"] == error for r in rows)
    assert [h.webhook_id for h in receiver.of(f"/{mode}")] == [str(event)] * 3
    assert receiver.of("/redirect-target") == []  # a redirect is never followed
    assert receiver.bad_signatures == []


async def test_gone_disables_the_endpoint_and_tells_the_tenant(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.modes["/gone"] = "gone"
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/gone", receiver=receiver)
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})

    async def disabled() -> bool:
        return not await pool.fetchval(
            "SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id
        )

    async with running(pool, settings):
        await eventually(disabled)
        await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "active"})
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox WHERE dispatched_at IS NULL")
        )
    endpoint = await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)
    assert "410" in endpoint["disabled_reason"]
    notice = await pool.fetchrow("SELECT * FROM tenant_notices WHERE subject_id = $1", endpoint_id)
    assert notice["tenant_id"] == tenant.id and notice["kind"] == "webhook_endpoint.disabled"
    assert len(receiver.of("/gone")) == 1  # nothing more was sent to it
    rows = await attempts_of(pool, endpoint_id)
    assert [(r["outcome"], r["status_code"]) for r in rows] == [("gone", 410)]


async def test_an_endpoint_failing_for_days_is_disabled(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.modes["/down"] = "fail"
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/down", receiver=receiver)
    await pool.execute(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '6 days' WHERE id = $1",
        endpoint_id,
    )
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    config = dataclasses.replace(FAST, disable_after_s=5 * 86400)
    async with running(pool, settings, config):
        await eventually(
            lambda: pool.fetchval(
                "SELECT NOT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id
            )
        )
    endpoint = await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)
    assert endpoint["disabled_reason"].startswith("every delivery failed since")
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM tenant_notices WHERE subject_id = $1", endpoint_id
        )
        == 1
    )


async def test_a_recent_failure_does_not_disable(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.modes["/flaky"] = "fail_first"
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/flaky", receiver=receiver)
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    async with running(pool, settings):
        await eventually(
            lambda: pool.fetchval(
                "SELECT last_success_at IS NOT NULL FROM webhook_endpoints WHERE id = $1",
                endpoint_id,
            )
        )
    endpoint = await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)
    assert endpoint["enabled"] and endpoint["failing_since"] is None


async def test_retry_after_is_honoured(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.modes["/busy"] = "busy"
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/busy", receiver=receiver)
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    async with running(pool, settings):
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) = 1 FROM webhook_attempts WHERE endpoint_id = $1 "
                "AND outcome IS NOT NULL",
                endpoint_id,
            )
        )
    attempt = (await attempts_of(pool, endpoint_id))[0]
    delivery = await pool.fetchrow(
        "SELECT * FROM webhook_deliveries WHERE endpoint_id = $1", endpoint_id
    )
    assert (attempt["status_code"], attempt["retry_after_s"]) == (429, 1.0)
    # The schedule says 20 ms; the receiver asked for a second.
    wait = (delivery["next_attempt_at"] - attempt["ended_at"]).total_seconds()
    assert 0.9 <= wait <= 1.5
    assert delivery["status"] == "pending"
    assert len(receiver.of("/busy")) == 1


@pytest.mark.parametrize(("overlap", "signatures"), [("1 hour", 2), ("-1 hour", 1)])
async def test_rotation_signs_with_both_secrets_during_the_overlap(
    pool: asyncpg.Pool,
    settings: Settings,
    tenant: Tenant,
    receiver: Receiver,
    overlap: str,
    signatures: int,
) -> None:
    url = f"{receiver.base}/rotating"
    endpoint_id, old = await add_endpoint(pool, tenant, url)
    new = new_secret()
    await pool.execute(
        f"""UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,
               previous_expires_at = now() + interval '{overlap}' WHERE id = $1""",
        endpoint_id,
        new,
    )
    # The receiver checks each secret on its own: a consumer holding either must accept.
    receiver.secrets["/rotating"] = [new, old] if signatures == 2 else [new]
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    async with running(pool, settings):
        await receiver.wait(lambda: len(receiver.of("/rotating")) == 1)
    assert receiver.bad_signatures == []
    assert len(receiver.of("/rotating")[0].signature.split(" ")) == signatures


async def test_a_lease_is_not_spent_waiting_for_a_sending_slot(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    # Two sends at a time, each 0.3 s of a 0.5 s lease: had more been leased than
    # can be sent, those waiting would outlive their leases and go twice.
    receiver.modes["/slow"] = "slow"
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/slow", receiver=receiver)
    events = [
        str(await emit(pool, tenant, None, None, "workflow.status_changed", {"n": n}))
        for n in range(8)
    ]
    config = dataclasses.replace(
        FAST, concurrency=2, read_timeout_s=0.4, total_timeout_s=0.4, lease_margin_s=0.1
    )
    async with running(pool, settings, config):
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) = 8 FROM webhook_deliveries"
                " WHERE endpoint_id = $1 AND status = 'succeeded'",
                endpoint_id,
            )
        )
    assert sorted(h.webhook_id for h in receiver.of("/slow")) == sorted(events)
    outcomes = [a["outcome"] for a in await attempts_of(pool, endpoint_id)]
    assert outcomes == ["succeeded"] * 8


async def test_a_hanging_receiver_does_not_hold_up_other_endpoints(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    # 40 events to a receiver that never answers are leased first and fill every
    # slot; the 3 s timeout would hold them all, and the fast endpoint's events
    # behind them, had the stalled sends not given their slots back.
    receiver.modes["/hang"] = "hang"
    hanging, _ = await add_endpoint(
        pool, tenant, f"{receiver.base}/hang", events=["workflow.status_changed"]
    )
    fast, _ = await add_endpoint(
        pool, tenant, f"{receiver.base}/fast", events=["record.completed"], receiver=receiver
    )
    for n in range(40):
        await emit(pool, tenant, None, None, "workflow.status_changed", {"n": n})
    config = dataclasses.replace(
        FAST,
        concurrency=8,
        read_timeout_s=3.0,
        total_timeout_s=3.0,
        lease_margin_s=0.4,
        stall_after_s=0.3,
        slow_endpoint_sends=2,
    )
    async with running(pool, settings, config):
        await receiver.wait(lambda: len(receiver.of("/hang")) >= 8)
        started = time.monotonic()
        fast_events = [
            str(await emit(pool, tenant, None, None, "record.completed", {"n": n}))
            for n in range(10)
        ]
        await receiver.wait(lambda: len(receiver.of("/fast")) >= 10)
        waited = time.monotonic() - started
        # Past one lease (3.4 s): the parked attempts' leases were renewed, so none
        # ran out and went again as interrupted.
        await asyncio.sleep(4.0)
        hang_hits = len(receiver.of("/hang"))
    assert waited < 1.5, f"the fast endpoint waited {waited:.1f} s behind the hanging one"
    assert sorted(h.webhook_id for h in receiver.of("/fast")) == sorted(fast_events)
    # The slow endpoint got its first 8 sends, then at most 2 at a time.
    assert hang_hits <= 8 + 2 * 3, hang_hits
    outcomes = [a["outcome"] for a in await attempts_of(pool, hanging)]
    assert "interrupted" not in outcomes
    assert set(outcomes) <= {"failed"}
    assert len(await attempts_of(pool, fast)) == 10


async def test_many_receivers_hanging_one_after_another_hold_up_no_one(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    # More receivers hang than the notifier can keep waiting on (2 stalled sends):
    # the sends it has no room for are cut short (failed, retried later) rather
    # than keep a slot, so the fast endpoint never waits out a timeout.
    hanging = []
    for i in range(4):
        receiver.modes[f"/hang{i}"] = "hang"
        workflow_id, _ = await make_records(pool, tenant, 1)
        endpoint_id, _ = await add_endpoint(
            pool,
            tenant,
            f"{receiver.base}/hang{i}",
            workflow_id=workflow_id,
            events=["workflow.status_changed"],
        )
        hanging.append((workflow_id, endpoint_id))
    await add_endpoint(
        pool, tenant, f"{receiver.base}/fast", events=["record.completed"], receiver=receiver
    )
    config = dataclasses.replace(
        FAST,
        concurrency=2,
        read_timeout_s=3.0,
        total_timeout_s=3.0,
        lease_margin_s=0.4,
        stall_after_s=0.2,
        slow_endpoint_sends=1,
    )
    waits = []
    async with running(pool, settings, config) as notifier:
        for workflow_id, _ in hanging:
            for n in range(3):
                await emit(pool, tenant, workflow_id, None, "workflow.status_changed", {"n": n})
            started = time.monotonic()
            event = str(await emit(pool, tenant, None, None, "record.completed", {}))
            await receiver.wait(
                lambda event=event: event in {h.webhook_id for h in receiver.of("/fast")}
            )
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.4)
        assert notifier._stalled_sends <= config.concurrency
    assert max(waits) < 1.0, waits
    errors = {a["error"] for _, endpoint in hanging for a in await attempts_of(pool, endpoint)}
    assert any(e and e.endswith("cut short") for e in errors), errors


async def test_two_notifiers_share_the_work_without_duplicates(
    big_pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    pool = big_pool
    workflow_id, records = await make_records(pool, tenant, 20)
    await add_endpoint(pool, tenant, f"{receiver.base}/shared", receiver=receiver)
    order: dict[str, int] = {}
    for step in range(5):
        for record in records:
            event = await emit(pool, tenant, workflow_id, record, data={"record_id": str(record)})
            order[str(event)] = step * 100 + len(order)
    async with running(pool, settings, name="one"), running(pool, settings, name="two"):
        await receiver.wait(lambda: len(receiver.of("/shared")) >= 100)
    hits = receiver.of("/shared")
    assert sorted(h.webhook_id for h in hits) == sorted(order)  # each exactly once
    assert_in_order(hits, order)
    assert receiver.bad_signatures == []


async def test_killed_mid_delivery_then_restarted_loses_nothing(
    big_pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    pool = big_pool
    receiver.modes["/slow"] = "hold"  # answers nothing until released
    workflow_id, records = await make_records(pool, tenant, 5)
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/slow", receiver=receiver)
    order: dict[str, int] = {}
    for _ in range(4):
        for record in records:
            event = await emit(pool, tenant, workflow_id, record, data={"record_id": str(record)})
            order[str(event)] = len(order)
    config = dataclasses.replace(FAST, total_timeout_s=5.0, read_timeout_s=5.0, lease_margin_s=0)
    stop = asyncio.Event()
    first = Notifier(pool, settings, config, name="doomed")
    task = asyncio.create_task(first.run(stop))
    await receiver.wait(lambda: len(receiver.of("/slow")) == 5)  # one per record, all held
    task.cancel()  # killed: no drain, no flush
    with pytest.raises(asyncio.CancelledError):
        await task
    receiver.modes["/slow"] = "ok"
    receiver.hold.set()
    # The leases still run; let them lapse as they would after a crash.
    await pool.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE endpoint_id = $1 "
        "AND status = 'pending'",
        endpoint_id,
    )
    async with running(pool, settings, name="restarted"):
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) = 20 FROM webhook_deliveries WHERE endpoint_id = $1 "
                "AND status = 'succeeded'",
                endpoint_id,
            )
        )
    hits = receiver.of("/slow")
    assert {h.webhook_id for h in hits} == set(order)
    assert_in_order(hits, order)
    outcomes = [r["outcome"] for r in await attempts_of(pool, endpoint_id)]
    assert outcomes.count("interrupted") == 5
    assert outcomes.count("succeeded") == 20
    assert None not in outcomes


# ----------------------------------------------------------------------------- hostile URLs


class SpyLookup:
    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def trap() -> AsyncIterator[socket.socket]:
    """A listening socket on loopback that no hostile URL may reach."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def assert_untouched(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = sock.accept()
        conn.close()


async def test_hostile_urls_are_refused_at_delivery_without_a_connection(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, trap: socket.socket
) -> None:
    port = trap.getsockname()[1]
    hostile = [
        f"http://127.0.0.1:{port}/",
        f"http://2130706433:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://127.1:{port}/",
        f"http://127.0.0.1.:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://example.com@127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://inward.example:{port}/",  # DNS says 127.0.0.1
        f"http://169.254.169.254:{port}/",
    ]
    spy = SpyLookup([["127.0.0.1"]])
    closed = dataclasses.replace(settings, webhook_allow_hosts=())
    endpoints = [(await add_endpoint(pool, tenant, url))[0] for url in hostile]
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})

    async def all_refused() -> bool:
        count = await pool.fetchval(
            "SELECT count(DISTINCT endpoint_id) FROM webhook_attempts "
            "WHERE endpoint_id = ANY ($1::uuid[]) AND outcome = 'refused'",
            endpoints,
        )
        return count >= len(endpoints)

    guard = AddressGuard(AllowList(), spy)
    async with running(pool, closed, guard=guard):
        await eventually(all_refused)
    assert_untouched(trap)
    assert spy.calls and set(spy.calls) == {"inward.example"}
    errors = await pool.fetch(
        "SELECT error FROM webhook_attempts WHERE endpoint_id = ANY ($1::uuid[]) "
        "AND outcome IS NOT NULL",
        endpoints,
    )
    assert all(r["error"].startswith("refused: ") for r in errors)


async def test_dns_rebinding_after_registration_is_refused(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, trap: socket.socket
) -> None:
    port = trap.getsockname()[1]
    spy = SpyLookup([["93.184.216.34"], ["127.0.0.1"]])  # public when asked, then inward
    closed = dataclasses.replace(settings, webhook_allow_hosts=())
    guard = AddressGuard(AllowList(), spy)
    app = create_app(closed, pool)
    app[webhooks.URL_GUARD] = guard
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(
            "/v1/webhook-endpoints",
            json={"url": f"http://rebind.example:{port}/hook"},
            headers=tenant.auth,
        )
        assert resp.status == 201, await resp.text()
        endpoint_id = uuid.UUID((await resp.json())["id"])
    await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    async with running(pool, closed, guard=guard):
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) > 0 FROM webhook_attempts WHERE endpoint_id = $1 "
                "AND outcome = 'refused'",
                endpoint_id,
            )
        )
    assert_untouched(trap)
    assert spy.calls[:2] == ["rebind.example", "rebind.example"]


async def test_redelivery_resends_under_the_same_webhook_id(
    pool: asyncpg.Pool, settings: Settings, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint_id, _ = await add_endpoint(pool, tenant, f"{receiver.base}/again", receiver=receiver)
    event = await emit(pool, tenant, None, None, "workflow.status_changed", {"status": "paused"})
    async with TestClient(TestServer(create_app(settings, pool))) as client:
        async with running(pool, settings):
            await receiver.wait(lambda: len(receiver.of("/again")) == 1)
            resp = await client.post(
                f"/v1/webhook-events/{event}/redeliver",
                json={"endpoint_id": str(endpoint_id)},
                headers=tenant.auth,
            )
            assert resp.status == 202, await resp.text()
            await receiver.wait(lambda: len(receiver.of("/again")) == 2)
        resp = await client.get(f"/v1/webhook-events/{event}/attempts", headers=tenant.auth)
        body = await resp.json()
    assert [h.webhook_id for h in receiver.of("/again")] == [str(event)] * 2
    assert [a["outcome"] for a in body["items"]] == ["succeeded", "succeeded"]
    assert receiver.bad_signatures == []
