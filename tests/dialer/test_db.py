"""Migrations: recorded, idempotent, and safe from two processes at once."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg

from dialer.db import apply_migrations, load_migrations, while_database_away
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


async def test_a_value_asyncpg_cannot_encode_is_not_waited_for() -> None:
    """A client-side data error is an InterfaceError to asyncpg, like a lost
    connection; waiting for the database would retry it for ever."""
    attempts = 0

    async def operation() -> None:
        nonlocal attempts
        attempts += 1
        raise asyncpg.exceptions._base.DataError("cannot encode")

    try:
        await asyncio.wait_for(while_database_away(operation, what="test"), timeout=5)
    except asyncpg.exceptions._base.DataError:
        pass
    else:
        raise AssertionError("the data error was swallowed")
    assert attempts == 1


async def test_a_lost_connection_is_waited_for() -> None:
    attempts = 0

    async def operation() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise asyncpg.InterfaceError("connection lost")
        return "done"

    assert await while_database_away(operation, what="test", max_delay_s=0.01) == "done"
    assert attempts == 3
