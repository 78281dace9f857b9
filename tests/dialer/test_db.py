"""Migrations: recorded, idempotent, and safe from two processes at once."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg

from dialer.db import apply_migrations, load_migrations
from tests.conftest import ADMIN_URL, _with_database

EXPECTED_TABLES = {
    "tenants",
    "api_keys",
    "workflows",
    "workflow_versions",
    "lists",
    "records",
    "node_runs",
    "calls",
    "recordings",
    "dnc",
    "webhook_endpoints",
    "outbox",
    "idempotency_keys",
    "schema_migrations",
}


async def test_migrations_concurrent_and_twice() -> None:
    name = f"dialer_mig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(ADMIN_URL, name)
        conns = [await asyncpg.connect(url) for _ in range(3)]
        try:
            results = await asyncio.gather(*(apply_migrations(c) for c in conns))
            # Exactly one migrator applied everything; the others found it done.
            versions = [m.version for m in load_migrations()]
            assert sorted(results, key=len) == [[], [], versions]
            assert await apply_migrations(conns[0]) == []
            tables = {
                r["tablename"]
                for r in await conns[0].fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert tables >= EXPECTED_TABLES
            recorded = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
            assert recorded == len(versions)
        finally:
            for c in conns:
                await c.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
