"""The whole path: records in over HTTP, SIP calls out to a SIPp callee, results back.

Real parts throughout: the API app, PostgreSQL, the broker (in-process and
RabbitMQ), the scheduler and event consumer, a worker with our SIP user agent
and RTP sessions, and SIPp as the callee (answers, then hangs up). What comes
back is checked in the calls, the recordings and the outbox the notifier
delivers from.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialer.bus import Broker
from dialer.settings import HostPort, Settings
from dialer.stack import default_trunk, start_worker
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.conftest import Tenant
from tests.integration.peers import free_port, start_sipp

pytestmark = pytest.mark.integration

DEFINITION = {
    "start": "call",
    "nodes": [
        {
            "id": "call",
            "type": "call",
            "handler": {"type": "prompt", "text": "Hello {{record.first_name}}"},
            "record": True,
            "ring_timeout_s": 20,
        },
        {"id": "done", "type": "end"},
    ],
    "edges": [{"from": "call", "on": "default", "to": "done"}],
}
PHONES = ["+442071838750", "+442071838751", "+442071838752"]


async def _wait(pool: asyncpg.Pool, sql: str, *args: object, timeout: float = 40.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pool.fetchval(sql, *args):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.1)


async def test_records_in_calls_out_results_back(
    client: TestClient,
    tenant: Tenant,
    pool: asyncpg.Pool,
    broker: Broker,
    tmp_path: Path,
    database_url: str,
) -> None:
    sipp = await start_sipp("uas_answer_callee_bye.xml", tmp_path, calls=len(PHONES), timeout_s=60)
    rtp_base = 20000 + (free_port() % 20000) // 2 * 2
    settings = Settings(
        database_url=database_url,
        sip_listen=HostPort("127.0.0.1", free_port()),
        trunk_uri=sipp.uri,
        rtp_port_min=rtp_base,
        rtp_port_max=rtp_base + 200,
        data_dir=tmp_path,
        recording_dir=tmp_path / "recordings",
    )
    resp = await client.post(
        "/v1/workflows",
        json={"name": "e2e", "definition": DEFINITION, "status": "active"},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    workflow = await resp.json()
    resp = await client.post(
        "/v1/records/bulk",
        json={
            "workflow_key": workflow["workflow_key"],
            "records": [
                {
                    "record_phone_number": p,
                    "record_first_name": f"Ada{i}",
                    "meta": {"zeta": True, "crm": i, "alpha": [1, {"b": 2, "a": 1}]},
                }
                for i, p in enumerate(PHONES)
            ],
        },
        headers=tenant.auth,
    )
    assert (await resp.json())["accepted"] == len(PHONES)

    consumer = EventConsumer(pool, broker)
    await consumer.start()
    trunk = default_trunk(settings)
    assert trunk is not None
    worker, agent = await start_worker(settings, pool, broker, trunk, capacity=5)
    stop = asyncio.Event()
    scheduler = Scheduler(pool, broker, tick_s=0.2, tenant_ids=[tenant.id])
    loop_task = asyncio.create_task(scheduler.run(stop))
    try:
        await _wait(
            pool,
            """SELECT count(*) = $2 FROM records
               WHERE tenant_id = $1 AND status = 'completed'""",
            tenant.id,
            len(PHONES),
        )
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        stop.set()
        await loop_task
        await worker.drain(timeout_s=10)
        await agent.close()
        await consumer.close()
        sipp.kill()

    calls = await pool.fetch("SELECT * FROM calls WHERE tenant_id = $1", tenant.id)
    assert len(calls) == len(PHONES)
    for call in calls:
        assert (call["state"], call["disposition"], call["sip_status"]) == (
            "ended",
            "answered",
            200,
        )
        assert call["hangup_by"] == "callee"
        assert call["dialing_at"] <= call["answered_at"] <= call["ended_at"]
        assert call["media_stats"]["packets_sent"] > 0
    recordings = await pool.fetch("SELECT * FROM recordings WHERE tenant_id = $1", tenant.id)
    assert len(recordings) == len(PHONES)
    for recording in recordings:
        assert not Path(recording["path"]).is_absolute()
        with wave.open(str(tmp_path / "recordings" / recording["path"])) as wav:
            assert wav.getnchannels() == 2 and wav.getframerate() == 8000
            assert wav.getnframes() / 8000 > 0.2
    events = await pool.fetch(
        "SELECT event_type, payload FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant.id
    )
    kinds = [e["event_type"] for e in events]
    assert kinds.count("call.completed") == len(PHONES)
    assert kinds.count("record.completed") == len(PHONES)
    assert kinds.count("recording.available") == len(PHONES)
    completed = [e["payload"]["data"] for e in events if e["event_type"] == "call.completed"]
    assert sorted(c["meta"]["crm"] for c in completed) == [0, 1, 2]
    # meta exactly as given, key order included, down to nested objects
    assert all(list(c["meta"]) == ["zeta", "crm", "alpha"] for c in completed)
    assert all(list(c["meta"]["alpha"][1]) == ["b", "a"] for c in completed)
    assert {c["phone"] for c in completed} == set(PHONES)


async def test_workflow_dials_through_its_named_trunk(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool, tmp_path: Path, database_url: str
) -> None:
    """The worker's default trunk leads nowhere; the workflow's own trunk reaches SIPp."""
    from dialer.bus import MemoryBroker

    broker = MemoryBroker("trunk-test")
    sipp = await start_sipp("uas_answer_callee_bye.xml", tmp_path, calls=1, timeout_s=60)
    resp = await client.post(
        "/v1/trunks", json={"name": "sipp", "uri": sipp.uri, "max_channels": 5}, headers=tenant.auth
    )
    assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/v1/workflows",
        json={
            "name": "via trunk",
            "definition": DEFINITION,
            "status": "active",
            "settings": {"trunk": "sipp", "retry": {}},
        },
        headers=tenant.auth,
    )
    workflow = await resp.json()
    await client.post(
        "/v1/records",
        json={
            "workflow_key": workflow["workflow_key"],
            "record_phone_number": PHONES[0],
            "record_first_name": "Ada",
        },
        headers=tenant.auth,
    )
    rtp_base = 20000 + (free_port() % 20000) // 2 * 2
    settings = Settings(
        database_url=database_url,
        sip_listen=HostPort("127.0.0.1", free_port()),
        trunk_uri="sip:127.0.0.1:9",  # the discard port: nobody answers there
        rtp_port_min=rtp_base,
        rtp_port_max=rtp_base + 50,
        data_dir=tmp_path,
        recording_dir=tmp_path / "recordings",
    )
    await broker.start()
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    trunk = default_trunk(settings)
    assert trunk is not None
    worker, agent = await start_worker(settings, pool, broker, trunk, capacity=2)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(
        Scheduler(pool, broker, tick_s=0.2, tenant_ids=[tenant.id]).run(stop)
    )
    try:
        await _wait(
            pool,
            "SELECT bool_and(status = 'completed') FROM records WHERE workflow_id = $1::uuid",
            workflow["id"],
        )
        assert await sipp.finish() == 0, sipp.errors()
    finally:
        stop.set()
        await loop_task
        await worker.drain(timeout_s=10)
        await agent.close()
        await consumer.close()
        await broker.close()
        sipp.kill()
    call = await pool.fetchrow(
        "SELECT disposition, sip_status FROM calls WHERE workflow_id = $1::uuid", workflow["id"]
    )
    assert (call["disposition"], call["sip_status"]) == ("answered", 200)
