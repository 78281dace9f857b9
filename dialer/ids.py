"""Identifiers: time-ordered UUIDs (version 7, RFC 9562) and workflow keys.

Time-ordered ids keep the primary-key B-tree appending at its right edge,
which matters when bulk ingestion inserts tens of thousands of rows a second.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid

__all__ = ["new_id", "new_ids", "new_workflow_key", "uuid7"]

_KEY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


def uuid7(unix_ms: int, rand: bytes) -> uuid.UUID:
    """A version-7 UUID from a millisecond timestamp and 10 random bytes."""
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(rand[:10], "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant RFC 9562
    return uuid.UUID(int=value)


def new_id() -> uuid.UUID:
    return uuid7(time.time_ns() // 1_000_000, os.urandom(10))


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` version-7 UUIDs, increasing, for one batch: one clock read, one urandom."""
    unix_ms = time.time_ns() // 1_000_000
    rand = os.urandom(10 * count)
    high = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76
    make = uuid.UUID
    ids = []
    for i in range(count):
        low = int.from_bytes(rand[10 * i : 10 * i + 10], "big")
        low = (low & ~(0xF << 76) & ~(0x3 << 62)) | (0x2 << 62)
        ids.append(make(int=high | low))
    # Random tails do not sort; the batch must, so that ids follow insertion order.
    ids.sort()
    return ids


def new_workflow_key() -> str:
    """Six characters, as the reference API's workflow keys; no 0/O or 1/l/I."""
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(6))
