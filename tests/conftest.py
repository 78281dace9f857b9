"""Shared fixtures: a fresh PostgreSQL database per test run, tenants, an API client.

Tests use the machine's real PostgreSQL (``DIALER_TEST_DATABASE_URL``, by
default the local server's ``test`` database) to create a database of their
own, which is dropped at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dialer.bus import AmqpBroker, Broker, MemoryBroker
from dialer.db import apply_migrations, connect_pool
from dialer.settings import Settings
from dialer.tenants import create_api_key, create_tenant

AMQP_URL = os.environ.get("DIALER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ADMIN_URL = os.environ.get("DIALER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


def testdata_dir() -> Path | None:
    """The shared external test data, beside the repository, if present."""
    env = os.environ.get("DIALER_TESTDATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


async def _create_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_with_database(ADMIN_URL, name))
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"dialer_test_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_create_database(name))
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture
def own_database_url() -> Iterator[str]:
    """A database of the test's own, for a process that serves every tenant it
    finds (the demo's stack): nothing other tests left behind reaches it."""
    name = f"dialer_own_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_create_database(name))
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        asyncio.run(_drop_database(name))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, min_size=1, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    name: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_tenant(pool: asyncpg.Pool, prefix: str = "t") -> Tenant:
    name = f"{prefix}-{secrets.token_hex(4)}"
    async with pool.acquire() as conn:
        tenant_id = await create_tenant(conn, name)
        key = await create_api_key(conn, tenant_id)
    return Tenant(tenant_id, name, key.key)


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "a")


@pytest.fixture
async def other_tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "b")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path, recording_dir=tmp_path / "rec")


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[TestClient]:
    from api.app import create_app

    async with TestClient(TestServer(create_app(settings, pool))) as client:
        yield client


@pytest.fixture(params=["memory", "rabbitmq"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """The same tests against the in-process broker and the machine's RabbitMQ."""
    namespace = f"test-{secrets.token_hex(4)}"
    broker: Broker = (
        MemoryBroker(namespace) if request.param == "memory" else AmqpBroker(AMQP_URL, namespace)
    )
    await broker.start()
    try:
        yield broker
    finally:
        if isinstance(broker, AmqpBroker):
            await broker.delete_all()
        await broker.close()
