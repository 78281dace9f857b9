"""PostgreSQL access: the connection pool and the versioned migrations.

Migrations are the numbered ``.sql`` files in ``dialer/migrations``. They are
applied in order inside one transaction that first takes an advisory lock, so
two processes starting at once apply them once, and a run that fails leaves
nothing half-applied.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import asyncpg

from dialer import jsonutil

__all__ = [
    "CLIENT_DATA_ERROR",
    "DATABASE_AWAY",
    "Migration",
    "apply_migrations",
    "connect_pool",
    "init_connection",
    "load_migrations",
    "while_database_away",
]

log = logging.getLogger(__name__)

# Any fixed 64-bit number: the key of the advisory lock that serialises migrators.
MIGRATION_LOCK_KEY = 0x6469616C6572  # "dialer"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

T = TypeVar("T")

# The database is away (restarting, unreachable, shutting down, a connection
# cut mid-statement): worth waiting for, unlike an error in a statement. asyncpg
# reports a lost connection as an InterfaceError, outside PostgresError.
DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
# A value asyncpg could not encode or decode on our side: the statement's fault,
# which waiting never mends. asyncpg files it under InterfaceError, beside a lost
# connection, so it must be told apart before DATABASE_AWAY is matched.
CLIENT_DATA_ERROR: type[BaseException] = asyncpg.exceptions._base.DataError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("dialer.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations not yet applied; return the versions applied now."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.version)
            log.info("applied migration %04d_%s", migration.version, migration.name)
    return applied_now


def _jsonb_encode(value: object) -> bytes:
    return b"\x01" + jsonutil.dumps_bytes(value)  # jsonb binary format: version 1, then text


def _jsonb_decode(data: bytes) -> object:
    return jsonutil.loads(data[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Codecs: json and jsonb travel as Python values, encoded with orjson.

    Binary format, so that COPY (which speaks only binary) can carry them.
    """
    await conn.set_type_codec(
        "json",
        encoder=jsonutil.dumps_bytes,
        decoder=jsonutil.loads,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Send no reset query when a connection goes back to the pool.

    asyncpg's default (unlock advisory locks, close cursors, unlisten, reset
    settings) is one more round trip per use of a pooled connection: half the
    transactions of a call in the dial pipeline. We keep no session state on
    pooled connections (locks and settings are transaction-scoped, cursors live
    in transactions, a LISTEN connection unlistens before it goes back), and
    asyncpg still rolls back an open transaction and drops listener callbacks
    on its side before this runs.
    """


async def connect_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        command_timeout=60,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def while_database_away(
    operation: Callable[[], Awaitable[T]], *, what: str, max_delay_s: float = 5.0
) -> T:
    """Run ``operation``; while the database is away, wait and run it again.

    For work that holds a queue message: retried in place, the message is not
    requeued in a tight loop toward its delivery limit. Cancelling stops it.
    """
    delay_s = 0.2
    while True:
        try:
            return await operation()
        except CLIENT_DATA_ERROR:
            raise
        except DATABASE_AWAY as exc:
            log.warning("%s: database away (%s); retrying in %.1f s", what, exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, max_delay_s)
