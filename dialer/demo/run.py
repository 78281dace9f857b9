"""``dialer demo``: run the whole stack against the sandbox carrier and watch it work.

The run, as a newcomer would do it by hand: start the stack (``dialer up``'s
parts, with the sandbox carrier as the trunk), a demo bot and local receivers
for webhooks and SMS; create a tenant and an API key; then only the public
API: register the webhook endpoint, create the workflow, post the sample
records as a list. While the calls go, the terminal shows the figures and the
live event stream (``GET /v1/live``). At the end it checks what a user would
check, prints a summary and exits 0 only when every record is final, every
webhook was delivered and verified, every yes-sayer got their SMS and every
answered call has a recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.live import Live

from dialer.demo.numbers import SLACK, WINDOW, SamplePerson, sample_people
from dialer.demo.progress import Snapshot, take_snapshot
from dialer.demo.sinks import Sinks, start_sinks
from dialer.demo.view import live_panel, plain_line, summary
from dialer.settings import Secret, Settings

__all__ = ["DemoOptions", "DemoReport", "demo_workflow", "execute_demo", "run_demo"]

LIST_CHUNK = 1000  # records per list: the API's batch limit
MIN_RECORDING_S = 1.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    records: int = 300
    seed: int = 1
    seats: int = 30
    pacing: str = "predictive"
    timeout_s: float = 900.0
    live: bool | None = None  # None: only when the output is a terminal


def demo_workflow(bot_url: str, *, seats: int, pacing: str) -> dict[str, Any]:
    """The workflow the demo creates through the API."""
    start, end = (t.strftime("%H:%M") for t in WINDOW)
    definition = {
        "start": "call",
        "nodes": [
            {
                "id": "call",
                "type": "call",
                "handler": {"type": "voicebot", "url": bot_url},
                "ring_timeout_s": 10,
                "max_duration_s": 90,
                "record": True,
                "amd": {"enabled": True, "on_machine": "hangup"},
            },
            {
                "id": "said_yes",
                "type": "branch",
                "condition": {"field": "result.answer", "operator": "equals", "value": "yes"},
            },
            {
                "id": "send_offer",
                "type": "sms",
                "text": "Hi {{record.first_name}}, thanks for saying yes! Your code: DEMO42.",
                "sender": "DialerDemo",
            },
            {"id": "offer_sent", "type": "end"},
            {"id": "sms_failed", "type": "end", "status": "failed"},
            {"id": "declined", "type": "end"},
        ],
        "edges": [
            {"from": "call", "on": "answered", "to": "said_yes"},
            {"from": "said_yes", "on": "true", "to": "send_offer"},
            {"from": "said_yes", "on": "false", "to": "declined"},
            {"from": "send_offer", "on": "sent", "to": "offer_sent"},
            {"from": "send_offer", "on": "failed", "to": "sms_failed"},
        ],
    }
    settings = {
        "calling_window": {
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": start,
            "end": end,
        },
        "recording": True,
        "retry": {
            "busy": {"delay_s": 8, "max_attempts": 3},
            "no_answer": {"delay_s": 8, "max_attempts": 2},
        },
        "pacing": {"mode": pacing, "seats": seats},
    }
    return {"name": "Dialer demo", "definition": definition, "settings": settings}


def _record_json(person: SamplePerson, index: int) -> dict[str, Any]:
    return {
        "record_phone_number": person.phone_e164,
        "record_first_name": person.first_name,
        "record_last_name": person.last_name,
        "placeholders": {"first_name": person.first_name},
        "meta": {"demo_index": index, "expected": person.behaviour, "zone": person.zone},
    }


def _event_line(event: str, data: dict[str, Any]) -> str:
    body = data.get("data", data)
    if not isinstance(body, dict):
        return event
    parts = [time.strftime("%H:%M:%S"), event]
    for key in ("phone", "disposition", "status", "outcome", "duration_s"):
        if body.get(key) not in (None, ""):
            parts.append(f"{key}={body[key]}")
    result = body.get("bot_result")
    if isinstance(result, dict) and result.get("values"):
        parts.append(f"bot={orjson.dumps(result['values']).decode()}")
    return "  ".join(str(p) for p in parts)


async def _follow_live(http: aiohttp.ClientSession, recent: deque[str]) -> None:
    """Read ``GET /v1/live`` as an operator's browser would, keeping the latest lines."""
    while True:
        try:
            async with http.get("/v1/live", timeout=aiohttp.ClientTimeout(total=None)) as response:
                event = "message"
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        with contextlib.suppress(orjson.JSONDecodeError):
                            recent.append(_event_line(event, orjson.loads(line[5:])))
                    elif not line:
                        event = "message"
        except (TimeoutError, aiohttp.ClientError):
            await asyncio.sleep(0.5)


async def _api(http: aiohttp.ClientSession, method: str, path: str, body: Any) -> dict[str, Any]:
    async with http.request(method, path, data=orjson.dumps(body)) as response:
        answer = await response.json(loads=orjson.loads)
        if response.status >= 400:
            raise RuntimeError(f"{method} {path} answered {response.status}: {answer}")
        return answer


@dataclass(frozen=True, slots=True)
class RecordResult:
    phone_e164: str
    behaviour: str  # what the sandbox was asked to play
    ended_as: str  # the end node reached, else the last outcome
    status: str
    calls: int


@dataclass
class DemoReport:
    """What a run did, gathered before the stack stops (tests read it)."""

    code: int = 1
    problems: list[str] = field(default_factory=list)
    snapshot: Snapshot | None = None
    records: list[RecordResult] = field(default_factory=list)
    recordings: list[tuple[str, float]] = field(default_factory=list)  # path, seconds
    sinks: Sinks | None = None
    calls_by_worker: Counter[str] = field(default_factory=Counter)

    def by_behaviour(self) -> list[tuple[str, str]]:
        ended: dict[str, Counter[str]] = {}
        for r in self.records:
            ended.setdefault(r.behaviour, Counter())[r.ended_as] += 1
        return [
            (name, f"{sum(c.values())} " + ", ".join(f"{k} {n}" for k, n in c.most_common()))
            for name, c in sorted(ended.items())
        ]


async def _record_results(
    pool: Any, tenant_id: Any, people: Sequence[SamplePerson]
) -> list[RecordResult]:
    behaviour = {p.phone_e164: p.behaviour for p in people}
    rows = await pool.fetch(
        """SELECT r.phone_e164, r.current_node, r.outcome, r.status,
                  (SELECT count(*) FROM calls c WHERE c.record_id = r.id) AS calls
           FROM records r WHERE r.tenant_id = $1""",
        tenant_id,
    )
    results = []
    for row in rows:
        label = row["current_node"] if row["current_node"] not in (None, "call") else None
        results.append(
            RecordResult(
                phone_e164=row["phone_e164"],
                behaviour=behaviour.get(row["phone_e164"], "?"),
                ended_as=label or row["outcome"] or row["status"],
                status=row["status"],
                calls=row["calls"],
            )
        )
    return results


async def _problems(pool: Any, tenant_id: Any, sinks: Sinks, snapshot: Snapshot) -> list[str]:
    problems = []
    if snapshot.final != snapshot.records:
        problems.append(f"{snapshot.records - snapshot.final} records did not reach a final state")
    if snapshot.in_flight:
        problems.append(f"{snapshot.in_flight} calls still open")
    for status in ("pending", "failed", "cancelled"):
        if snapshot.deliveries[status]:
            problems.append(f"{snapshot.deliveries[status]} webhook deliveries {status}")
    if len(sinks.events) != snapshot.webhooks_delivered:
        problems.append(
            f"the receiver verified {len(sinks.events)} webhooks, "
            f"the notifier delivered {snapshot.webhooks_delivered}"
        )
    if sinks.bad_signatures:
        problems.append(f"{sinks.bad_signatures} webhooks had a bad signature")
    if not sinks.event_types["list.completed"]:
        problems.append("no list.completed webhook")
    yes = await pool.fetchval(
        """SELECT count(DISTINCT record_id) FROM calls
           WHERE tenant_id = $1 AND bot_result->'values'->>'answer' = 'yes'""",
        tenant_id,
    )
    if len(sinks.sms) != yes:
        problems.append(f"{yes} people said yes but the SMS gateway got {len(sinks.sms)} messages")
    unrecorded = await pool.fetchval(
        """SELECT count(*) FROM calls c WHERE c.tenant_id = $1 AND c.answered_at IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.call_id = c.id
                             AND r.duration_s >= $2)""",
        tenant_id,
        MIN_RECORDING_S,
    )
    if unrecorded:
        problems.append(f"{unrecorded} answered calls have no recording of {MIN_RECORDING_S} s+")
    return problems


def demo_settings(settings: Settings, sinks: Sinks) -> Settings:
    """The settings the demo's stack runs on: receivers on loopback allowed, an SMS gateway."""
    changes: dict[str, Any] = {
        "webhook_allow_hosts": (*settings.webhook_allow_hosts, "127.0.0.0/8"),
    }
    if not settings.webhook_secret.value:
        changes["webhook_secret"] = Secret(secrets.token_urlsafe(32))
    names = {f.name for f in dataclasses.fields(settings)}
    if "sms_url" in names:
        changes["sms_url"] = sinks.sms_url
    return dataclasses.replace(settings, **changes)


async def run_demo(settings: Settings, options: DemoOptions, console: Console) -> int:
    """Run the demo; the exit code: 0 only when every check passed."""
    return (await execute_demo(settings, options, console)).code


async def execute_demo(settings: Settings, options: DemoOptions, console: Console) -> DemoReport:
    from dialer.bus import make_broker
    from dialer.cli import database
    from dialer.db import apply_migrations, connect_pool
    from dialer.stack import running_stack
    from dialer.tenants import create_api_key, create_tenant
    from media.bots import serve_bot
    from media.demo_bot import DemoBot
    from media.playback import SpeechRenderer

    people = sample_people(options.records, datetime.now(UTC), options.seed)
    zones = sorted({p.zone for p in people})
    console.print(
        f"[bold]dialer demo[/]: {len(people)} sample people in {len(zones)} time zones "
        # The people are drawn where an hour of calling is left before the window closes.
        f"where it is now between {WINDOW[0]:%H:%M} and "
        f"{(datetime.combine(datetime.min, WINDOW[1]) - SLACK):%H:%M} "
        f"({', '.join(zones)})"
    )
    sinks = await start_sinks()
    bot = await serve_bot(DemoBot(SpeechRenderer(settings.data_dir / "tts")))
    settings = demo_settings(settings, sinks)
    try:
        async with database(settings) as url:
            settings = dataclasses.replace(settings, database_url=url)  # for worker processes
            pool = await connect_pool(url, max_size=20)
            try:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
                    async with conn.transaction():
                        tenant_id = await create_tenant(conn, f"demo-{secrets.token_hex(4)}")
                        key = await create_api_key(conn, tenant_id, "dialer demo")
                broker = make_broker(settings.amqp_url)
                stack_started = datetime.now(UTC)
                async with running_stack(settings, pool, broker, worker_processes=True) as stack:
                    if stack.worker_processes is not None:
                        await _wait_for_workers(
                            pool, stack.worker_processes.pids, stack_started, console
                        )
                    api = f"http://{settings.api_listen}"
                    console.print(
                        f"API on {api} (tenant key {key.key}); sandbox carrier at "
                        f"{stack.sandbox.uri if stack.sandbox else settings.trunk_uri}; "
                        f"demo bot at {bot.url}"
                    )
                    return await _drive(
                        pool,
                        tenant_id,
                        key.key,
                        api,
                        bot.url,
                        sinks,
                        people,
                        settings,
                        options,
                        console,
                    )
            finally:
                await pool.close()
    finally:
        await bot.close()
        await sinks.close()


async def _wait_for_workers(
    pool: Any, pids: Sequence[int], since: datetime, console: Console, timeout_s: float = 30.0
) -> None:
    """Wait until the worker processes have registered (each then takes jobs at once),
    so the list is shared by all of them rather than taken by whoever came up first."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = await pool.fetchval(
            """SELECT count(*) FROM workers
               WHERE pid = ANY($1::int[]) AND stopped_at IS NULL AND last_seen_at >= $2""",
            list(pids),
            since,
        )
        if ready >= len(pids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if ready < len(pids):
        console.print(f"only {ready} of {len(pids)} worker processes came up; going on")


async def _drive(
    pool: Any,
    tenant_id: Any,
    api_key: str,
    api: str,
    bot_url: str,
    sinks: Sinks,
    people: Sequence[SamplePerson],
    settings: Settings,
    options: DemoOptions,
    console: Console,
) -> DemoReport:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    started = time.monotonic()
    async with aiohttp.ClientSession(base_url=api, headers=headers) as http:
        endpoint = await _api(http, "POST", "/v1/webhook-endpoints", {"url": sinks.hooks_url})
        sinks.set_secret(endpoint["secret"])
        workflow = await _api(
            http,
            "POST",
            "/v1/workflows",
            {
                **demo_workflow(bot_url, seats=options.seats, pacing=options.pacing),
                "status": "active",
            },
        )
        recent: deque[str] = deque(maxlen=8)
        follower = asyncio.create_task(_follow_live(http, recent))
        try:
            for first in range(0, len(people), LIST_CHUNK):
                chunk = people[first : first + LIST_CHUNK]
                answer = await _api(
                    http,
                    "POST",
                    f"/v1/workflows/{workflow['id']}/lists",
                    {
                        "name": f"demo {first // LIST_CHUNK + 1}",
                        "records": [_record_json(p, first + i) for i, p in enumerate(chunk)],
                    },
                )
                if answer.get("errors"):
                    raise RuntimeError(f"sample records refused: {answer['errors'][:3]}")
            snapshot = await _watch(pool, tenant_id, sinks, recent, started, options, console)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    problems = await _problems(pool, tenant_id, sinks, snapshot)
    recordings = [
        (str(settings.recording_dir / r["path"]), float(r["duration_s"]))
        for r in await pool.fetch(
            """SELECT path, duration_s FROM recordings WHERE tenant_id = $1
                 AND deleted_at IS NULL ORDER BY duration_s DESC""",
            tenant_id,
        )
    ]
    report = DemoReport(
        code=1 if problems else 0,
        problems=problems,
        snapshot=snapshot,
        records=await _record_results(pool, tenant_id, people),
        recordings=recordings,
        sinks=sinks,
        calls_by_worker=Counter(
            {
                r["worker_id"]: r["n"]
                for r in await pool.fetch(
                    """SELECT coalesce(worker_id, '') AS worker_id, count(*) AS n FROM calls
                       WHERE tenant_id = $1 GROUP BY 1""",
                    tenant_id,
                )
            }
        ),
    )
    console.print(summary(snapshot, report.by_behaviour(), problems))
    if recordings:
        # Paths are printed whole (no wrapping) so they can be copied.
        console.print(f"recordings: {len(recordings)} in {settings.recording_dir}", soft_wrap=True)
        console.print(f"play one:   play {recordings[0][0]}", soft_wrap=True, highlight=False)
    return report


async def _watch(
    pool: Any,
    tenant_id: Any,
    sinks: Sinks,
    recent: deque[str],
    started: float,
    options: DemoOptions,
    console: Console,
) -> Snapshot:
    live = console.is_terminal if options.live is None else options.live

    async def snap() -> Snapshot:
        return await take_snapshot(
            pool,
            tenant_id,
            elapsed_s=time.monotonic() - started,
            seats=options.seats,
            sinks=sinks,
        )

    snapshot = await snap()
    deadline = started + options.timeout_s
    if live:
        with Live(
            live_panel(snapshot, list(recent)), console=console, refresh_per_second=4
        ) as view:
            while not snapshot.done and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                snapshot = await snap()
                view.update(live_panel(snapshot, list(recent)))
        return snapshot
    last_print = 0.0
    while not snapshot.done and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        snapshot = await snap()
        if time.monotonic() - last_print >= 5:
            console.print(plain_line(snapshot), highlight=False)
            last_print = time.monotonic()
    return snapshot
