"""A call node hands the answered call to a voicebot; the bot's result drives a branch.

Real parts: PostgreSQL, the broker, scheduler and consumer, a worker with our
SIP user agent and RTP, the sandbox carrier as the callee (a person who
listens, then presses 1), and a scripted bot speaking the Twilio Media
Streams format that waits for a key, reports it and hangs up.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import pytest

from dialer.bus import MemoryBroker
from dialer.ids import new_id
from dialer.settings import HostPort, Settings
from dialer.stack import Stack
from media.bots import Script, ScriptedBot, serve_bot
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import make_tenant
from tests.integration.peers import free_port

pytestmark = pytest.mark.integration


async def test_bot_result_reaches_the_call_and_the_branch(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    bot_server = await serve_bot(ScriptedBot(Script(tone_ms=600, wait_digit_s=15)))
    tenant = await make_tenant(pool, "bot")
    definition = {
        "start": "call",
        "nodes": [
            {"id": "call", "type": "call", "handler": {"type": "voicebot", "url": bot_server.url}},
            {
                "id": "said_yes",
                "type": "branch",
                "condition": {"field": "result.digit", "operator": "equals", "value": "1"},
            },
            {"id": "yes", "type": "end"},
            {"id": "no", "type": "end"},
        ],
        "edges": [
            {"from": "call", "on": "answered", "to": "said_yes"},
            {"from": "said_yes", "on": "true", "to": "yes"},
            {"from": "said_yes", "on": "false", "to": "no"},
        ],
    }
    workflow_id = new_id()
    await pool.execute(
        """INSERT INTO workflows (id, tenant_id, workflow_key, name, status)
           VALUES ($1, $2, $3, 'bot', 'active')""",
        workflow_id,
        tenant.id,
        secrets.token_hex(3),
    )
    await pool.execute(
        """INSERT INTO workflow_versions (workflow_id, version, definition, settings)
           VALUES ($1, 1, $2, '{"retry": {}}')""",
        workflow_id,
        definition,
    )
    record_id = new_id()
    await pool.execute(
        """INSERT INTO records (id, tenant_id, workflow_id, workflow_version, phone_e164,
               first_name, next_attempt_at)
           VALUES ($1, $2, $3, 1, '+442071838750', 'Ada', to_timestamp(0))""",
        record_id,
        tenant.id,
        workflow_id,
    )
    rtp_base = 32000 + (free_port() % 8000) // 2 * 2
    settings = Settings(
        database_url=database_url,
        sip_listen=HostPort("127.0.0.1", free_port()),
        rtp_port_min=rtp_base,
        rtp_port_max=rtp_base + 100,
        data_dir=tmp_path,
        recording_dir=tmp_path / "recordings",
    )
    broker = MemoryBroker(f"bot-{secrets.token_hex(3)}")
    stack = Stack(settings, pool, broker, None)
    await stack.start(api=False, scheduler=False, notifier=False)
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    stop = asyncio.Event()
    loop_task = asyncio.create_task(
        Scheduler(pool, broker, tick_s=0.2, tenant_ids=[tenant.id]).run(stop)
    )
    try:
        deadline = asyncio.get_running_loop().time() + 45
        while (
            await pool.fetchval("SELECT status FROM records WHERE id = $1", record_id)
            != "completed"
        ):
            assert asyncio.get_running_loop().time() < deadline, "record did not complete"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await loop_task
        await consumer.close()
        await stack.close()
        await bot_server.close()
    call = await pool.fetchrow("SELECT * FROM calls WHERE record_id = $1", record_id)
    assert call["disposition"] == "answered"
    assert call["bot_result"]["values"] == {"digit": "1"}
    assert call["bot_result"]["outcome"] == "bot_hangup"
    assert call["hangup_by"] == "us"
    record = await pool.fetchrow(
        "SELECT current_node, outcome FROM records WHERE id = $1", record_id
    )
    assert record["current_node"] == "yes"
