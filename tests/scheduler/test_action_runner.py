"""Action nodes end to end: real PostgreSQL, a real HTTP receiver, a real SMTP server.

The receiver is an aiohttp app on loopback playing both the SMS gateway and
the tenants' webhook endpoints, each path answering with the statuses the
test scripts; the SMTP server is aiosmtpd's, in the test's own event loop.
Records walk their workflows through the scheduler, the event consumer and
the action runner exactly as in production.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from api.ingest import insert_records
from api.notifier import AddressGuard
from api.urlsafety import AllowList
from api.validation import validate_record
from dialer.bus import MemoryBroker
from dialer.ids import new_id
from dialer.jsonutil import dumps, loads
from scheduler.action_runner import ActionRunner, AttemptResult, RunnerConfig
from scheduler.actions import ActionPolicy, Gateways, SmsGateway, SmtpServer
from scheduler.consumer import EventConsumer
from scheduler.definition import validate_definition
from scheduler.engine import Scheduler
from tests.conftest import Tenant, make_tenant
from tests.scheduler.test_engine import NOON, Clock, FakeWorker

pytestmark = [
    pytest.mark.integration,
    # Our aiosmtpd asks for AUTH without TLS, on loopback, to check the credentials pass.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

FAST = RunnerConfig(
    policy=ActionPolicy(max_attempts=3, retry_delays_s=(0.05, 0.05)),
    connect_timeout_s=2.0,
    total_timeout_s=5.0,
    lease_margin_s=5.0,
    poll_interval_s=0.05,
)
LOOPBACK_ALLOWED = AddressGuard(AllowList.parse(["127.0.0.1"]))


@dataclass
class Receiver:
    """Records every request; each path answers with its scripted statuses, then 200."""

    url: str = ""
    script: dict[str, list[int]] = field(default_factory=dict)
    hits: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits[request.path].append(
            {"method": request.method, "headers": dict(request.headers), "body": body}
        )
        statuses = self.script.get(request.path, [])
        status = statuses.pop(0) if statuses else 200
        return web.json_response({"status": status}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        return "250 OK queued"


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"dialer", b"p@ss")
    return AuthResult(success=ok)


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, SmtpServer]]:
    """aiosmtpd on loopback, taking mail only after AUTH (plain text here: no TLS on loopback)."""
    box = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            box,
            hostname="mx.test",
            auth_required=True,
            auth_require_tls=False,
            authenticator=_authenticator,
        ),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        # As DIALER_SMTP_URL=smtp://dialer:p%40ss@127.0.0.1:PORT?starttls=off would give it.
        yield box, SmtpServer.parse(f"smtp://dialer:p%40ss@127.0.0.1:{port}?starttls=off")
    finally:
        server.close()
        await server.wait_closed()


async def _workflow(pool: asyncpg.Pool, tenant: Tenant, definition: dict) -> asyncpg.Record:
    validate_definition(definition)
    workflow_id = new_id()
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO workflows (id, tenant_id, workflow_key, name, status)
               VALUES ($1, $2, $3, 'actions test', 'active')""",
            workflow_id,
            tenant.id,
            secrets.token_hex(3),
        )
        await conn.execute(
            """INSERT INTO workflow_versions (workflow_id, version, definition, settings)
               VALUES ($1, 1, $2, $3)""",
            workflow_id,
            definition,
            {"pacing": {"mode": "progressive", "seats": 5}},
        )
        return await conn.fetchrow(
            "SELECT id, current_version, workflow_key FROM workflows WHERE id = $1", workflow_id
        )


async def _record(
    pool: asyncpg.Pool, tenant: Tenant, workflow: asyncpg.Record, **fields
) -> uuid.UUID:
    item = {"record_phone_number": "2125550123", "record_first_name": "Anna", **fields}
    valid = validate_record(item, allow_e164=False, allow_case_id=False)
    async with pool.acquire() as conn:
        (record_id,) = await insert_records(conn, tenant.id, workflow, [valid])
        await conn.execute(
            "UPDATE records SET next_attempt_at = to_timestamp(0) WHERE id = $1", record_id
        )
    return record_id


def _runner(pool: asyncpg.Pool, tenant: Tenant, gateways: Gateways, **kw: Any) -> ActionRunner:
    kw.setdefault("config", FAST)
    kw.setdefault("guard", LOOPBACK_ALLOWED)
    return ActionRunner(pool, gateways, tenant_ids=[tenant.id], **kw)


async def _until(pool: asyncpg.Pool, sql: str, *args: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pool.fetchval(sql, *args):
        assert time.monotonic() < deadline, sql
        await asyncio.sleep(0.02)


async def _runs(pool: asyncpg.Pool, record_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT node_id, node_type, status, outcome, detail FROM node_runs
           WHERE record_id = $1 ORDER BY started_at, ended_at NULLS LAST""",
        record_id,
    )


SMS_THEN_END = {
    "start": "call",
    "nodes": [
        {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "Hi"}},
        {
            "id": "sms",
            "type": "sms",
            "sender": "ACME",
            "text": (
                "Hi {{record.firstName}}, we missed you ({{call.outcome}}) {{placeholders.when}}"
            ),
        },
        {"id": "sent", "type": "end"},
        {"id": "not_sent", "type": "end", "status": "failed"},
        {"id": "done", "type": "end"},
    ],
    "edges": [
        {"from": "call", "on": "no_answer", "to": "sms"},
        {"from": "call", "on": "default", "to": "done"},
        {"from": "sms", "on": "sent", "to": "sent"},
        {"from": "sms", "on": "failed", "to": "not_sent"},
    ],
}


async def test_call_then_sms_through_the_gateway(pool: asyncpg.Pool, receiver: Receiver) -> None:
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, SMS_THEN_END)
    record_id = await _record(pool, tenant, workflow, placeholders={"when": "Tuesday"})
    broker = MemoryBroker(f"test-{secrets.token_hex(4)}")
    await broker.start()
    clock = Clock(NOON)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    worker = FakeWorker(broker, {"+12125550123": ["no_answer"]}, clock)
    sub = await broker.consume_jobs(worker, prefetch=10)
    scheduler = Scheduler(pool, broker, clock=clock, tenant_ids=[tenant.id])
    try:
        assert (await scheduler.tick()).published == 1
        await _until(pool, "SELECT count(*) = 1 FROM actions WHERE record_id = $1", record_id)
    finally:
        await sub.cancel()
        await consumer.close()
        await broker.close()
    # Parked at the SMS node: not due for the scheduler, and the list would still be open.
    parked = await pool.fetchrow(
        "SELECT status, current_node FROM records WHERE id = $1", record_id
    )
    assert (parked["status"], parked["current_node"]) == ("in_progress", "sms")
    clock.now += 3600
    assert (await scheduler.tick()).published == 0
    assert not receiver.hits  # nothing is sent inside the record's transaction

    gateway = SmsGateway(f"{receiver.url}/sms", authorization="Bearer gw-key")
    async with _runner(pool, tenant, Gateways(sms=gateway), clock=clock) as runner:
        assert await runner.run_once() == 1
    (hit,) = receiver.hits["/sms"]
    assert loads(hit["body"]) == {
        "to": "+12125550123",
        "from": "ACME",
        "text": "Hi Anna, we missed you (no_answer) Tuesday",
    }
    assert hit["headers"]["Authorization"] == "Bearer gw-key"
    action = await pool.fetchrow("SELECT * FROM actions WHERE record_id = $1", record_id)
    assert hit["headers"]["Idempotency-Key"] == str(action["id"])
    assert (action["status"], action["outcome"], action["attempts"]) == ("done", "sent", 1)
    record = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", record_id)
    assert (record["status"], record["outcome"]) == ("completed", "sent")
    runs = await _runs(pool, record_id)
    assert [(r["node_id"], r["status"], r["outcome"]) for r in runs] == [
        ("call", "completed", "no_answer"),
        ("sms", "completed", "sent"),
        ("sent", "completed", "sent"),
    ]
    assert runs[1]["detail"]["status_code"] == 200
    completed = await pool.fetchval(
        """SELECT count(*) FROM outbox WHERE record_id = $1 AND event_type = 'record.completed'""",
        record_id,
    )
    assert completed == 1


HOOK_THEN_EMAIL = {
    "start": "hook",
    "nodes": [
        {
            "id": "hook",
            "type": "webhook",
            "url": "RECEIVER/crm/{{meta.crm_id}}",
            "method": "POST",
            "body": {"name": "{{record.first_name}} {{record.lastName}}", "meta": "{{meta}}"},
        },
        {
            "id": "mail",
            "type": "email",
            "subject": "Hello {{record.first_name}}",
            "body": "See you {{placeholders.when}}.",
        },
        {"id": "done", "type": "end"},
        {"id": "broken", "type": "end", "status": "failed"},
    ],
    "edges": [
        {"from": "hook", "on": "success", "to": "mail"},
        {"from": "hook", "on": "failure", "to": "broken"},
        {"from": "mail", "on": "sent", "to": "done"},
        {"from": "mail", "on": "failed", "to": "broken"},
    ],
}


def _with_receiver(definition: dict, receiver: Receiver) -> dict:
    return loads(dumps(definition).replace("RECEIVER", receiver.url))


async def test_webhook_retried_on_500_then_email(
    pool: asyncpg.Pool, receiver: Receiver, smtp: tuple[Mailbox, SmtpServer]
) -> None:
    box, server = smtp
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, _with_receiver(HOOK_THEN_EMAIL, receiver))
    meta = {"crm_id": 77, "z": [1, {"b": 2}], "a": "first key after z"}
    record_id = await _record(
        pool,
        tenant,
        workflow,
        record_last_name="Smith",
        meta=meta,
        placeholders={"when": "Tuesday", "email": "anna@example.com"},
    )
    receiver.script["/crm/77"] = [500]
    scheduler = Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id])
    await scheduler.tick()
    gateways = Gateways(smtp=server, email_from="Dialer <noreply@dialer.test>")
    stop = asyncio.Event()
    runner = _runner(pool, tenant, gateways)
    task = asyncio.create_task(runner.run(stop))
    try:
        await _until(pool, "SELECT status = 'completed' FROM records WHERE id = $1", record_id)
    finally:
        stop.set()
        await task
    hits = receiver.hits["/crm/77"]
    assert len(hits) == 2  # a 500, then the retry's 200
    body = loads(hits[1]["body"])
    assert body == {"name": "Anna Smith", "meta": meta}
    assert list(body["meta"]) == ["crm_id", "z", "a"]  # the CRM's key order, as given
    assert hits[0]["headers"]["Idempotency-Key"] == hits[1]["headers"]["Idempotency-Key"]
    (message,) = box.messages
    assert message["Subject"] == "Hello Anna" and message["To"] == "anna@example.com"
    assert message.get_content().strip() == "See you Tuesday."
    assert box.envelopes == [("noreply@dialer.test", ["anna@example.com"])]
    runs = await _runs(pool, record_id)
    assert [(r["node_id"], r["outcome"]) for r in runs] == [
        ("hook", "success"),
        ("mail", "sent"),
        ("done", "sent"),
    ]
    assert runs[0]["detail"]["attempts"] == 2 and runs[0]["detail"]["status_code"] == 200


async def test_webhook_failures_take_the_failure_edge(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, _with_receiver(HOOK_THEN_EMAIL, receiver))
    permanent = await _record(pool, tenant, workflow, meta={"crm_id": 404})
    exhausted = await _record(pool, tenant, workflow, meta={"crm_id": 503})
    receiver.script["/crm/404"] = [404]
    receiver.script["/crm/503"] = [503] * 10
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    async with _runner(pool, tenant, Gateways()) as runner:
        deadline = time.monotonic() + 10
        while await pool.fetchval(
            "SELECT count(*) FROM actions WHERE record_id = ANY($1) AND status = 'pending'",
            [permanent, exhausted],
        ):
            assert time.monotonic() < deadline
            await runner.run_once()
            await asyncio.sleep(0.03)
    assert len(receiver.hits["/crm/404"]) == 1  # a 404 is final at once
    assert len(receiver.hits["/crm/503"]) == FAST.policy.max_attempts
    for record_id, status in ((permanent, 404), (exhausted, 503)):
        record = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", record_id)
        assert (record["status"], record["outcome"]) == ("failed", "failure")
        hook = (await _runs(pool, record_id))[0]
        assert (hook["status"], hook["outcome"]) == ("failed", "failure")
        assert hook["detail"]["status_code"] == status
        assert hook["detail"]["error"].startswith(f"HTTP {status}")


async def test_hostile_webhook_url_is_refused(pool: asyncpg.Pool, receiver: Receiver) -> None:
    tenant = await make_tenant(pool, "act")
    # The receiver is on loopback, which webhooks may not reach unless the operator allows it.
    workflow = await _workflow(pool, tenant, _with_receiver(HOOK_THEN_EMAIL, receiver))
    record_id = await _record(pool, tenant, workflow, meta={"crm_id": 1})
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    strict = AddressGuard(AllowList.parse([]))
    async with _runner(pool, tenant, Gateways(), guard=strict) as runner:
        assert await runner.run_once() == 1
    assert not receiver.hits
    hook = (await _runs(pool, record_id))[0]
    assert hook["outcome"] == "failure"
    assert hook["detail"]["error"].startswith("refused: ") and "loopback" in hook["detail"]["error"]
    record = await pool.fetchrow("SELECT status FROM records WHERE id = $1", record_id)
    assert record["status"] == "failed"


SMS_ONLY = {
    "start": "sms",
    "nodes": [
        {"id": "sms", "type": "sms", "text": "Hello {{record.first_name}}"},
        {"id": "ok", "type": "end"},
        {"id": "ko", "type": "end", "status": "failed"},
    ],
    "edges": [
        {"from": "sms", "on": "sent", "to": "ok"},
        {"from": "sms", "on": "failed", "to": "ko"},
    ],
}


async def test_sms_without_gateway_fails_clearly(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, SMS_ONLY)
    record_id = await _record(pool, tenant, workflow)
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    async with _runner(pool, tenant, Gateways()) as runner:
        assert await runner.run_once() == 1
    sms = (await _runs(pool, record_id))[0]
    assert sms["outcome"] == "failed"
    assert sms["detail"]["error"] == "no SMS gateway configured (DIALER_SMS_URL)"
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", record_id) == "failed"


async def test_finished_actions_are_deleted_after_the_retention(pool: asyncpg.Pool) -> None:
    """Rendered requests hold names and message texts: kept 30 days by default."""
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, SMS_ONLY)
    old, recent = [await _record(pool, tenant, workflow) for _ in range(2)]
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    async with _runner(pool, tenant, Gateways()) as runner:
        assert await runner.run_once() == 2
        pending = await _record(pool, tenant, workflow)
        await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
        await pool.execute(
            """UPDATE actions SET completed_at = now() - interval '31 days',
                   created_at = now() - interval '31 days'
               WHERE record_id = $1 OR record_id = $2""",
            old,
            pending,
        )
        runs_before = await _runs(pool, old)
        assert await runner.purge() == 1
        assert await runner.purge() == 0
    left = await pool.fetch(
        "SELECT record_id, status FROM actions WHERE record_id = ANY($1::uuid[])",
        [old, recent, pending],
    )
    assert sorted((r["record_id"] == recent, r["status"]) for r in left) == [
        (False, "pending"),
        (True, "done"),
    ]
    # The record's node runs stay: only the action's copy of the request goes.
    assert await _runs(pool, old) == runs_before and runs_before


async def test_no_sms_to_a_number_on_the_dnc_list(pool: asyncpg.Pool, receiver: Receiver) -> None:
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, SMS_ONLY)
    record_id = await _record(pool, tenant, workflow)
    await pool.execute(
        "INSERT INTO dnc (tenant_id, phone_e164) VALUES ($1, '+12125550123')", tenant.id
    )
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    gateways = Gateways(sms=SmsGateway(f"{receiver.url}/sms"))
    async with _runner(pool, tenant, gateways) as runner:
        assert await runner.run_once() == 1
    assert not receiver.hits
    sms = (await _runs(pool, record_id))[0]
    assert (sms["outcome"], sms["detail"]["error"]) == (
        "failed",
        "the number is on the do-not-call list",
    )


async def test_lease_runs_out_and_another_runner_takes_the_action(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    tenant = await make_tenant(pool, "act")
    workflow = await _workflow(pool, tenant, SMS_ONLY)
    record_id = await _record(pool, tenant, workflow)
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    short = RunnerConfig(total_timeout_s=0.75, lease_margin_s=0.75, poll_interval_s=0.05)
    gateways = Gateways(sms=SmsGateway(f"{receiver.url}/sms"))
    dead = _runner(pool, tenant, gateways, config=short, name="dead")
    (claim,) = await dead._claim(10)  # claimed, then the process "dies" before sending
    async with _runner(pool, tenant, gateways, config=short, name="alive") as alive:
        assert await alive.run_once() == 0  # still leased
        await asyncio.sleep(1.7)  # the lease (1.5 s) runs out
        assert await alive.run_once() == 1
    assert len(receiver.hits["/sms"]) == 1
    action = await pool.fetchrow("SELECT * FROM actions WHERE record_id = $1", record_id)
    assert (action["status"], action["outcome"], action["attempts"]) == ("done", "sent", 2)
    # The dead runner's late answer finds its lease gone and changes nothing.
    await dead._settle(claim, AttemptResult(ok=False, error="late"))
    again = await pool.fetchrow(
        "SELECT outcome, last_error FROM actions WHERE id = $1", action["id"]
    )
    assert (again["outcome"], again["last_error"]) == ("sent", None)
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", record_id) == "completed"
    assert len(await _runs(pool, record_id)) == 2  # sms and its end: nothing advanced twice


async def test_paused_waits_stopped_cancels_completed_skips(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    tenant = await make_tenant(pool, "act")
    gateways = Gateways(sms=SmsGateway(f"{receiver.url}/sms"))
    paused_wf = await _workflow(pool, tenant, SMS_ONLY)
    stopped_wf = await _workflow(pool, tenant, SMS_ONLY)
    paused = await _record(pool, tenant, paused_wf)
    stopped = await _record(pool, tenant, stopped_wf)
    completed = await _record(pool, tenant, paused_wf, record_phone_number="2125550199")
    await Scheduler(pool, MemoryBroker("unused"), tenant_ids=[tenant.id]).tick()
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM actions WHERE tenant_id = $1 AND status = 'pending'", tenant.id
        )
        == 3
    )
    await pool.execute("UPDATE workflows SET status = 'paused' WHERE id = $1", paused_wf["id"])
    await pool.execute("UPDATE workflows SET status = 'stopped' WHERE id = $1", stopped_wf["id"])
    # What POST /api/complete/ does to an open record.
    await pool.execute(
        "UPDATE records SET status = 'completed', outcome = 'completed_by_api' WHERE id = $1",
        completed,
    )
    async with _runner(pool, tenant, gateways) as runner:
        assert await runner.run_once() == 1  # the stopped workflow's; the paused ones wait
        assert not receiver.hits
        cancelled = await pool.fetchrow(
            "SELECT status, outcome FROM records WHERE id = $1", stopped
        )
        assert (cancelled["status"], cancelled["outcome"]) == ("cancelled", "workflow_stopped")
        await pool.execute("UPDATE workflows SET status = 'active' WHERE id = $1", paused_wf["id"])
        assert await runner.run_once() == 2
    assert len(receiver.hits["/sms"]) == 1  # the completed record's SMS was never sent
    assert await pool.fetchval("SELECT status FROM records WHERE id = $1", paused) == "completed"
    done = await pool.fetchrow("SELECT status, outcome FROM records WHERE id = $1", completed)
    assert (done["status"], done["outcome"]) == ("completed", "completed_by_api")
    statuses = await pool.fetch(
        "SELECT record_id, status FROM actions WHERE tenant_id = $1", tenant.id
    )
    assert {r["record_id"]: r["status"] for r in statuses} == {
        paused: "done",
        stopped: "cancelled",
        completed: "cancelled",
    }
