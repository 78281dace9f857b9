"""Setup shared by tests that run workflows through the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from api.ingest import insert_records
from api.validation import validate_record
from dialer.bus import MemoryBroker
from dialer.ids import new_id
from dialer.settings import HostPort, Settings
from dialer.stack import default_trunk, start_worker
from dialer.worker import Worker
from scheduler.consumer import EventConsumer
from scheduler.engine import Scheduler
from tests.integration.peers import free_port


async def insert_workflow(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    definition: dict[str, Any],
    settings: dict[str, Any],
    name: str = "test",
) -> asyncpg.Record:
    """An active workflow at version 1, as the scheduler reads it."""
    workflow_id = new_id()
    await pool.execute(
        """INSERT INTO workflows (id, tenant_id, workflow_key, name, status)
           VALUES ($1, $2, $3, $4, 'active')""",
        workflow_id,
        tenant_id,
        secrets.token_hex(3),
        name,
    )
    await pool.execute(
        """INSERT INTO workflow_versions (workflow_id, version, definition, settings)
           VALUES ($1, 1, $2, $3)""",
        workflow_id,
        definition,
        settings,
    )
    return await pool.fetchrow(
        "SELECT id, current_version, workflow_key FROM workflows WHERE id = $1", workflow_id
    )


async def insert_uk_records(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, workflow: asyncpg.Record, phones: list[str]
) -> list[uuid.UUID]:
    """Records for UK numbers: US ones are only called 08:00-21:00 in New York,
    and tests run at any hour."""
    records = [
        validate_record(
            {"record_phone_number": phone, "record_first_name": "Ada"},
            allow_e164=True,
            allow_case_id=False,
        )
        for phone in phones
    ]
    async with pool.acquire() as conn:
        return await insert_records(conn, tenant_id, workflow, records, None)


def worker_settings(
    database_url: str, tmp_path: Path, trunk_uri: str, rtp_ports: int = 50
) -> Settings:
    """A worker's settings on free loopback ports, its files under ``tmp_path``."""
    rtp_base = 20000 + (free_port() % 20000) // 2 * 2
    return Settings(
        database_url=database_url,
        sip_listen=HostPort("127.0.0.1", free_port()),
        trunk_uri=trunk_uri,
        rtp_port_min=rtp_base,
        rtp_port_max=rtp_base + rtp_ports,
        data_dir=tmp_path,
        recording_dir=tmp_path / "recordings",
    )


async def seed_call_history(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, record_id: uuid.UUID, workflow_id: uuid.UUID
) -> None:
    """100 calls ended within the hour, for the predictive pacer to learn from:
    40 answered after 2-4 s of ringing and talking two minutes, 60 unanswered
    after 2-6 s."""
    await pool.execute(
        """INSERT INTO calls (id, tenant_id, record_id, workflow_id, node_id, phone_e164,
                              state, disposition, dialing_at, answered_at, ended_at)
           SELECT gen_random_uuid(), $1, $2, $3, 'call', '+442071838800', 'ended',
                  CASE WHEN i <= 40 THEN 'answered' ELSE 'no_answer' END,
                  t0,
                  CASE WHEN i <= 40 THEN t0 + (2 + (i % 5) * 0.5) * interval '1 second' END,
                  CASE WHEN i <= 40 THEN t0 + (122 + (i % 5) * 0.5) * interval '1 second'
                       ELSE t0 + (2 + (i % 9) * 0.5) * interval '1 second' END
           FROM generate_series(1, 100) AS i,
                LATERAL (SELECT now() - interval '40 minutes' + i * interval '10 seconds' AS t0)
                AS s""",
        tenant_id,
        record_id,
        workflow_id,
    )


@contextlib.asynccontextmanager
async def running_pipeline(
    pool: asyncpg.Pool, settings: Settings, tenant_id: uuid.UUID, namespace: str
) -> AsyncIterator[tuple[Scheduler, Worker]]:
    """The in-process broker, the event consumer, one SIP worker and the scheduler
    (0.2 s ticks, this tenant only), stopped in order on the way out."""
    broker = MemoryBroker(namespace)
    await broker.start()
    consumer = EventConsumer(pool, broker)
    await consumer.start()
    trunk = default_trunk(settings)
    assert trunk is not None
    worker, agent = await start_worker(settings, pool, broker, trunk, capacity=4)
    scheduler = Scheduler(pool, broker, tick_s=0.2, tenant_ids=[tenant_id])
    stop = asyncio.Event()
    loop_task = asyncio.create_task(scheduler.run(stop))
    try:
        yield scheduler, worker
    finally:
        stop.set()
        await loop_task
        await worker.drain(timeout_s=10)
        await agent.close()
        await consumer.close()
        await broker.close()
