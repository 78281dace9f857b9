"""Tenants and their API keys.

A key is ``dk_<prefix>_<secret>``. We store the prefix (to find the row) and
the SHA-256 of the whole key, never the key; the comparison is constant-time.
Keys carry 256 bits of randomness, so a fast hash is the right one here: a
slow password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from dialer.ids import new_id

__all__ = ["ApiKey", "create_api_key", "create_tenant", "resolve_api_key", "revoke_api_key"]

_DUMMY_HASH = hashlib.sha256(b"no such key").digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    tenant_id: uuid.UUID
    key: str  # shown once, at creation


def _split(key: str) -> tuple[str, str] | None:
    parts = key.split("_")
    if len(parts) != 3 or parts[0] != "dk" or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_tenant(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    """Create the tenant, or return the id of the one with this name."""
    row = await conn.fetchrow(
        """INSERT INTO tenants (id, name) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
        new_id(),
        name,
    )
    return row["id"]


async def create_api_key(conn: asyncpg.Connection, tenant_id: uuid.UUID, label: str = "") -> ApiKey:
    prefix = secrets.token_hex(6)
    key = f"dk_{prefix}_{secrets.token_urlsafe(32).replace('_', '-')}"
    key_id = new_id()
    await conn.execute(
        "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, label) VALUES ($1, $2, $3, $4, $5)",
        key_id,
        tenant_id,
        prefix,
        hashlib.sha256(key.encode()).digest(),
        label,
    )
    return ApiKey(key_id, tenant_id, key)


async def resolve_api_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> uuid.UUID | None:
    """The tenant a key belongs to, or ``None`` for a wrong or revoked key."""
    parts = _split(key) if isinstance(key, str) else None
    row = None
    if parts is not None:
        row = await conn.fetchrow(
            "SELECT tenant_id, key_hash FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL",
            parts[0],
        )
    presented = hashlib.sha256(key.encode() if isinstance(key, str) else b"").digest()
    stored = row["key_hash"] if row is not None else _DUMMY_HASH
    if hmac.compare_digest(presented, stored) and row is not None:
        return row["tenant_id"]
    return None


async def revoke_api_key(conn: asyncpg.Connection, tenant_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    status = await conn.execute(
        """UPDATE api_keys SET revoked_at = now()
           WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL""",
        key_id,
        tenant_id,
    )
    return status.endswith("1")
