"""The webhook notifier: the outbox delivered to the tenants' endpoints.

How an event travels:

1. *Dispatch.* New outbox rows are fanned out to the tenant's enabled
   endpoints whose workflow and event filters match: one
   ``webhook_deliveries`` row each, in the transaction that marks the outbox
   row dispatched (so each event is fanned out exactly once). One notifier
   dispatches at a time (an advisory lock), which keeps deliveries in
   outbox order.
2. *Lease.* Due deliveries are taken with ``FOR UPDATE SKIP LOCKED``; a
   delivery is due only when no earlier delivery of the same record to the
   same endpoint is still pending, which is what keeps one record's events
   in order while different records go out concurrently. Leasing pushes
   ``next_attempt_at`` past the longest possible attempt and writes the
   attempt row: a notifier killed mid-delivery loses nothing, the lease
   runs out and any notifier delivers it again (at least once; the
   ``webhook-id`` is the same, so receivers can drop the duplicate).
3. *Send.* One signed POST per attempt (Standard Webhooks: ``webhook-id``,
   ``webhook-timestamp``, ``webhook-signature``; both secrets during a
   rotation's overlap), redirects not followed, connect and read timeouts,
   and the URL checked again against the outbound rules, down to the address
   actually connected to.
4. *Record.* Results are written in batches: the attempt's answer, the
   delivery's next state (done, retried later on the schedule, or given up),
   and the endpoint's health (a 410 disables it; failing for longer than
   ``disable_after_s`` disables it and leaves the tenant a notice).

The pure parts (the retry schedule, the verdict on an answer, the signature
headers, the body) are plain functions at the top of this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import ipaddress
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks.webhooks import Webhook

from api.endpoint_gates import EndpointGates
from api.links import link_key, purge_expired_recordings, recording_link
from api.urlsafety import (
    AllowList,
    IPAddress,
    UnsafeUrl,
    WebhookUrl,
    check_address,
    check_addresses,
    check_url,
)
from dialer import jsonutil
from dialer.ids import new_id
from dialer.settings import Settings

__all__ = [
    "RECORDING_OF_EVENT_SQL",
    "SPEC_RETRY_DELAYS_S",
    "AddressGuard",
    "Attempt",
    "Notifier",
    "NotifierConfig",
    "RefusedAddress",
    "Verdict",
    "event_body",
    "event_recording",
    "judge_answer",
    "parse_retry_after",
    "retry_delay_s",
    "signature_header",
    "webhook_headers",
]

log = logging.getLogger(__name__)

# The Standard Webhooks schedule: after the first (immediate) attempt fails,
# wait 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over ~28 h.
SPEC_RETRY_DELAYS_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
_NOTIFY_CHANNEL = "dialer_outbox"
_DISPATCH_LOCK_KEY = 0x6469616C6F7574  # "dialout": one dispatcher at a time
_USER_AGENT = "dialer-webhooks/0.1"


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """How the notifier retries, times out and batches; tests shorten the schedule."""

    retry_delays_s: tuple[float, ...] = SPEC_RETRY_DELAYS_S
    jitter: float = 0.1  # each delay is scaled by a uniform factor in [1 - j, 1 + j]
    retry_after_cap_s: float = 86400.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 30.0
    lease_margin_s: float = 10.0
    disable_after_s: float = 5 * 86400.0
    concurrency: int = 256
    batch_size: int = 500
    flush_interval_s: float = 0.005
    poll_interval_s: float = 1.0
    link_ttl_s: int = 7 * 86400
    max_response_bytes: int = 512
    purge_interval_s: float = 3600.0
    delivery_retention_s: float = 30 * 86400.0
    stop_grace_s: float = 5.0
    # A send running this long gives its slot back and marks its endpoint slow:
    # a slow endpoint's attempts then go ``slow_endpoint_sends`` at a time, until
    # ``slow_hold_s`` after its last such send.
    stall_after_s: float = 5.0
    slow_endpoint_sends: int = 16
    slow_hold_s: float = 60.0

    @property
    def lease_s(self) -> float:
        return self.total_timeout_s + self.lease_margin_s


# --------------------------------------------------------------------------- pure


def retry_delay_s(
    failed_attempts: int,
    schedule: Sequence[float],
    *,
    jitter: float,
    rand: float,
    retry_after_s: float | None = None,
    retry_after_cap_s: float = 86400.0,
) -> float | None:
    """Seconds to wait after ``failed_attempts`` failures, or None when the schedule is spent.

    ``rand`` is a uniform draw in [0, 1) handed in by the caller. Retry-After
    (RFC 9110 §10.2.3) can only lengthen the wait, never shorten it below the
    schedule, and is capped so that a receiver cannot park an event forever.
    """
    if failed_attempts < 1 or failed_attempts > len(schedule):
        return None
    delay = schedule[failed_attempts - 1] * (1.0 + jitter * (2.0 * rand - 1.0))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, retry_after_cap_s))
    return max(delay, 0.0)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from ``now``: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # Past nine digits (31 years) the caller's cap applies anyway; int() of a
        # few hundred digits would not fit a float.
        return float(int(text)) if len(text) <= 9 else 1e9
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(when.timestamp() - now, 0.0)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt's answer means for the attempt, the delivery and the endpoint."""

    outcome: str  # attempt outcome: succeeded, failed, gone, refused
    status: str  # delivery status after it: succeeded, pending (retry), failed (given up)
    delay_s: float | None  # when pending: seconds until the next attempt
    disable_endpoint: bool


def judge_answer(
    attempt: int,
    status_code: int | None,
    *,
    refused: bool,
    retry_after_s: float | None,
    config: NotifierConfig,
    rand: float,
) -> Verdict:
    """The verdict on attempt number ``attempt`` (1-based).

    Only a 2xx is a success: a 3xx is a failure (redirects are not followed,
    so that a receiver cannot bounce us to an internal address), and 410 Gone
    means the receiver wants no more and the endpoint is disabled. Anything
    else (another status, a timeout, a refused address) is retried.
    """
    if status_code is not None and 200 <= status_code < 300:
        return Verdict("succeeded", "succeeded", None, False)
    if status_code == 410:
        return Verdict("gone", "failed", None, True)
    delay = retry_delay_s(
        attempt,
        config.retry_delays_s,
        jitter=config.jitter,
        rand=rand,
        retry_after_s=retry_after_s,
        retry_after_cap_s=config.retry_after_cap_s,
    )
    outcome = "refused" if refused else "failed"
    if delay is None:
        return Verdict(outcome, "failed", None, False)
    return Verdict(outcome, "pending", delay, False)


def signature_header(signers: Sequence[Webhook], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: one ``v1,<base64>`` per secret, space-separated.

    During a rotation's overlap both secrets sign, so a receiver holding
    either verifies. The signed content is the exact body bytes sent.
    """
    stamp = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    text = body.decode("utf-8")
    return " ".join(s.sign(msg_id=msg_id, timestamp=stamp, data=text) for s in signers)


def webhook_headers(
    signers: Sequence[Webhook], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers plus the content type."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(signers, msg_id, timestamp, body),
    }


def event_recording(
    public_url: str, key: bytes | None, recording_id: uuid.UUID | None, expires: int
) -> dict[str, Any] | None:
    """The recording fields an event's body gets: None without a recording or a link key."""
    if recording_id is None or key is None:
        return None
    return {"id": str(recording_id), **recording_link(public_url, key, recording_id, expires)}


def event_body(
    payload: Mapping[str, Any],
    created_at: dt.datetime,
    recording: Mapping[str, Any] | None,
) -> bytes:
    """The JSON body: ``type``, ``id``, ``timestamp`` (when it happened) and ``data``.

    ``call.completed`` always carries ``recording_url`` (null without a
    recording); any event that names a recording gets its link.
    """
    data = dict(payload.get("data") or {})
    event_type = payload.get("type")
    if recording is not None:
        data["recording_id"] = recording["id"]
        data["recording_url"] = recording["url"]
        data["recording_url_expires_at"] = recording["expires_at"]
    elif event_type == "call.completed":
        data.setdefault("recording_url", None)
    stamp = created_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return jsonutil.dumps_bytes(
        {"type": event_type, "id": payload.get("id"), "timestamp": stamp, "data": data}
    )


# --------------------------------------------------------------------------- edge: addresses

Lookup = Callable[[str, int], Awaitable[list[str]]]


class RefusedAddress(OSError):
    """The URL or the address it leads to is one webhooks may not reach."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Resolves webhook hosts and lets connections reach only the addresses that passed.

    The guard is both the connector's resolver (a name's answer is judged
    before aiohttp sees it) and its socket factory (the address a socket is
    about to connect to is judged again), so neither a literal address nor a
    second, rebinding DNS answer gets past it.
    """

    def __init__(self, allow: AllowList, lookup: Lookup | None = None) -> None:
        self.allow = allow
        self.lookup = lookup or _system_lookup
        # Addresses of hosts allowed by name: the socket factory cannot see the
        # name, so it accepts what the resolver approved for such a host.
        self._approved: set[IPAddress] = set()

    async def resolve(self, host: str, port: int) -> tuple[IPAddress, ...]:
        try:
            answers = await self.lookup(host, port)
        except OSError as exc:
            raise UnsafeUrl(f"{host} does not resolve ({exc.strerror or exc})") from None
        addresses = check_addresses(host, answers, self.allow)
        if self.allow.allows_host(host):
            self._approved.update(addresses)
        return addresses

    async def check_url(self, raw: str) -> WebhookUrl:
        """Everything :func:`check_url` checks, plus what the host resolves to now."""
        url = check_url(raw, self.allow)
        if url.address is None:
            await self.resolve(url.host, url.port)
        return url

    def socket_factory(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in self._approved:
            try:
                check_address(address, self.allow)
            except UnsafeUrl as exc:
                raise RefusedAddress(exc.reason) from None
        return socket.socket(family=family, type=type_, proto=proto)

    def resolver(self) -> AbstractResolver:
        return _GuardedResolver(self)


class _GuardedResolver(AbstractResolver):
    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self.guard.resolve(host, port)
        except UnsafeUrl as exc:
            raise RefusedAddress(exc.reason) from None
        return [
            {
                "hostname": host,
                "host": str(a),
                "port": port,
                "family": socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for a in addresses
        ]

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- edge: the loop


@dataclass(slots=True)
class Attempt:
    """One leased delivery attempt and, once sent, its answer."""

    delivery_id: int
    tenant_id: uuid.UUID
    attempt: int
    endpoint_id: uuid.UUID
    url: str
    secrets: tuple[str, ...]
    event_id: uuid.UUID
    payload: dict[str, Any]
    created_at: dt.datetime
    recording_id: uuid.UUID | None
    status_code: int | None = None
    error: str | None = None
    refused: bool = False
    retry_after_s: float | None = None
    excerpt: str | None = None
    duration_ms: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    leased_at: float = 0.0  # monotonic
    stalled: bool = False  # gave its sending slot back while it waited for the answer
    cut_short: bool = False  # stalled with no room to wait: ended as timed out
    deadline: asyncio.Timeout | None = None  # the send's, while it runs


_DISPATCH_SQL = """
WITH batch AS (
    SELECT id, tenant_id, event_id, event_type, record_id, workflow_id FROM outbox
    WHERE dispatched_at IS NULL ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED
), fan AS (
    INSERT INTO webhook_deliveries (tenant_id, endpoint_id, outbox_id, order_key)
    SELECT b.tenant_id, e.id, b.id, coalesce(b.record_id, b.event_id)
    FROM batch b
    JOIN webhook_endpoints e ON e.tenant_id = b.tenant_id AND e.enabled
        AND e.deleted_at IS NULL
        AND (e.workflow_id IS NULL OR e.workflow_id = b.workflow_id)
        AND (cardinality(e.events) = 0 OR b.event_type = ANY (e.events))
    ORDER BY b.id, e.id
    RETURNING 1
)
UPDATE outbox o SET dispatched_at = now()
FROM batch b WHERE o.id = b.id
RETURNING (SELECT count(*) FROM fan) AS fanned
"""

_UUID_RE = "'^[0-9a-fA-F-]{36}$'"
# The recording an outbox row ``o`` names (by id, or by its call), for its link:
# a lateral subquery, shared with the live view so both show the same body.
RECORDING_OF_EVENT_SQL = f"""
    SELECT r.id FROM recordings r
    WHERE o.event_type IN ('call.completed', 'recording.available')
      AND r.tenant_id = o.tenant_id AND r.deleted_at IS NULL
      AND (r.id = CASE WHEN o.payload->'data'->>'recording_id' ~ {_UUID_RE}
                       THEN (o.payload->'data'->>'recording_id')::uuid END
           OR (o.payload->'data'->>'recording_id' IS NULL
               AND r.call_id = CASE WHEN o.payload->'data'->>'call_id' ~ {_UUID_RE}
                                    THEN (o.payload->'data'->>'call_id')::uuid END))
    ORDER BY r.created_at LIMIT 1
"""
_LEASE_SQL = f"""
WITH due AS (
    SELECT d.id, d.leased_by, d.attempts FROM webhook_deliveries d
    JOIN webhook_endpoints e ON e.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND e.enabled AND e.deleted_at IS NULL AND d.endpoint_id <> ALL ($4::uuid[])
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries p
          WHERE p.endpoint_id = d.endpoint_id AND p.order_key = d.order_key
            AND p.status = 'pending' AND p.outbox_id < d.outbox_id)
    ORDER BY d.next_attempt_at, d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
), leased AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, leased_by = $3,
        next_attempt_at = now() + make_interval(secs => $2)
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.tenant_id, d.endpoint_id, d.outbox_id, d.attempts
), interrupted AS (
    -- Still leased when its lease ran out: the notifier holding it died before
    -- recording an answer. The attempt is kept, as interrupted.
    INSERT INTO webhook_attempts (tenant_id, delivery_id, endpoint_id, event_id, attempt, url,
                                  outcome, error, ended_at)
    SELECT l.tenant_id, l.id, l.endpoint_id, o.event_id, due.attempts, e.url, 'interrupted',
           'the notifier ' || due.leased_by || ' stopped before the answer was recorded', now()
    FROM due
    JOIN leased l ON l.id = due.id
    JOIN outbox o ON o.id = l.outbox_id
    JOIN webhook_endpoints e ON e.id = l.endpoint_id
    WHERE due.leased_by IS NOT NULL
)
SELECT l.id AS delivery_id, l.tenant_id, l.attempts AS attempt, l.endpoint_id,
       e.url, e.secret,
       CASE WHEN e.previous_expires_at > now() THEN e.previous_secret END AS previous_secret,
       o.event_id, o.payload, o.created_at, rec.id AS recording_id
FROM leased l
JOIN webhook_endpoints e ON e.id = l.endpoint_id
JOIN outbox o ON o.id = l.outbox_id
LEFT JOIN LATERAL ({RECORDING_OF_EVENT_SQL}) rec ON true
"""

_RECORD_ATTEMPTS_SQL = """
INSERT INTO webhook_attempts (tenant_id, delivery_id, endpoint_id, event_id, attempt, url,
    started_at, ended_at, outcome, status_code, error, duration_ms, response_excerpt,
    retry_after_s, next_attempt_at)
SELECT x.tenant_id, x.delivery_id, x.endpoint_id, x.event_id, x.attempt, x.url,
       to_timestamp(x.started_at), to_timestamp(x.ended_at), x.outcome, x.status_code, x.error,
       x.duration_ms, x.excerpt, x.retry_after_s,
       CASE WHEN x.delay_s IS NOT NULL THEN now() + make_interval(secs => x.delay_s) END
FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::int[], $6::text[],
            $7::float8[], $8::float8[], $9::text[], $10::int[], $11::text[], $12::float8[],
            $13::text[], $14::float8[], $15::float8[])
     AS x(tenant_id, delivery_id, endpoint_id, event_id, attempt, url, started_at, ended_at,
          outcome, status_code, error, duration_ms, excerpt, retry_after_s, delay_s)
"""

# The attempts guard keeps a late answer from a lease that ran out (and was
# leased again elsewhere) from overwriting the newer attempt's state.
_RECORD_DELIVERIES_SQL = """
UPDATE webhook_deliveries d
SET status = x.status, leased_by = NULL, last_status = x.status_code, last_error = x.error,
    next_attempt_at = CASE WHEN x.status = 'pending'
                           THEN now() + make_interval(secs => x.delay_s)
                           ELSE d.next_attempt_at END,
    completed_at = CASE WHEN x.status <> 'pending' THEN now() END
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::int[], $6::text[])
     AS x(id, attempt, status, delay_s, status_code, error)
WHERE d.id = x.id AND d.attempts = x.attempt AND d.status = 'pending'
"""

_DISABLE_SQL = """
UPDATE webhook_endpoints
SET enabled = false, disabled_at = now(), updated_at = now(),
    disabled_reason = CASE WHEN id = ANY ($1::uuid[])
        THEN 'the receiver answered 410 Gone'
        ELSE 'every delivery failed since ' || to_char(failing_since AT TIME ZONE 'UTC',
                                                      'YYYY-MM-DD"T"HH24:MI:SS"Z"') END
WHERE enabled AND deleted_at IS NULL
  AND (id = ANY ($1::uuid[])
       OR (id = ANY ($2::uuid[]) AND failing_since <= now() - make_interval(secs => $3)))
RETURNING id, tenant_id, url, disabled_reason
"""


class Notifier:
    """Delivers the outbox; run one or several (in any processes) over the same database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        config: NotifierConfig | None = None,
        *,
        guard: AddressGuard | None = None,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.config = config or NotifierConfig()
        self.guard = guard or AddressGuard(AllowList.parse(settings.webhook_allow_hosts))
        self.rng = rng or random.Random()
        self.name = name or f"notifier-{os.getpid()}-{new_id().hex[-8:]}"
        self._link_key = link_key(settings.webhook_secret.value)
        self._wake = asyncio.Event()
        # Set by NOTIFY (an outbox row committed): dispatch at once, else on the poll.
        self._outbox_dirty = True
        self._dispatch_wake = asyncio.Event()
        self._results: list[Attempt] = []
        self._results_ready = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._send_slots = asyncio.Semaphore(self.config.concurrency)
        self._gates = EndpointGates(self.config.slow_endpoint_sends, self.config.slow_hold_s)
        self._parked: dict[tuple[int, int], Attempt] = {}  # waiting at a slow endpoint's gate
        self._stalled_sends = 0  # sends that gave their slot back while they wait
        # Sends of slow endpoints (past their gates): slots of their own.
        self._slow_slots = asyncio.Semaphore(self.config.concurrency)
        self._slow_sending = 0
        self._signers: dict[str, Webhook] = {}
        self._urls: dict[str, WebhookUrl | UnsafeUrl] = {}
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0  # attempts answered 2xx by this notifier

    # ------------------------------------------------------------------ public

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then finish (or abandon) what is in flight."""
        cfg = self.config
        connector = aiohttp.TCPConnector(
            # The slots, as many stalled sends, and as many slow endpoints' sends.
            limit=3 * cfg.concurrency,
            limit_per_host=0,
            resolver=self.guard.resolver(),
            socket_factory=self.guard.socket_factory,
            ttl_dns_cache=30,
        )
        timeout = aiohttp.ClientTimeout(
            total=cfg.total_timeout_s,
            sock_connect=cfg.connect_timeout_s,
            sock_read=cfg.read_timeout_s,
        )
        listener = await self.pool.acquire()
        await listener.add_listener(_NOTIFY_CHANNEL, self._on_notify)
        stopper = asyncio.create_task(self._wake_on(stop))
        flusher = asyncio.create_task(self._flush_loop(stop))
        dispatcher = asyncio.create_task(self._dispatch_loop(stop))
        try:
            async with aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # never carry cookies between tenants
                headers={"User-Agent": _USER_AGENT},
                auto_decompress=False,
            ) as session:
                self._session = session
                await self._feed_loop(stop)
                if self._inflight:
                    _, pending = await asyncio.wait(self._inflight, timeout=cfg.stop_grace_s)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                self._results_ready.set()
                await flusher
        finally:
            self._session = None
            for helper in (stopper, flusher, dispatcher):
                if not helper.done():
                    helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await listener.remove_listener(_NOTIFY_CHANNEL, self._on_notify)
            await self.pool.release(listener)

    async def dispatch(self) -> int:
        """Fan out one batch of new outbox rows; return the number of rows taken."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _DISPATCH_LOCK_KEY):
                return 0  # another notifier is dispatching; its rows come first
            rows = await conn.fetch(_DISPATCH_SQL, self.config.batch_size)
        return len(rows)

    # ------------------------------------------------------------------ loops

    def _on_notify(self, *_: object) -> None:
        self._outbox_dirty = True
        self._dispatch_wake.set()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()
        self._dispatch_wake.set()
        self._results_ready.set()

    async def _feed_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        next_purge = time.monotonic()
        while not stop.is_set():
            self._wake.clear()
            busy = False
            try:
                # Lease ahead: up to twice the sending concurrency is leased, so that
                # the next batch is ready when a slot frees rather than a query later.
                # An attempt that waited for its slot renews its lease first.
                # Counted: attempts that hold or await a sending slot. Not those parked
                # at a slow endpoint's gate, sending past it, or stalled.
                waiting_elsewhere = len(self._parked) + self._slow_sending + self._stalled_sends
                free = 2 * cfg.concurrency - (len(self._inflight) - waiting_elsewhere)
                if free >= max(1, min(cfg.batch_size, cfg.concurrency) // 4) or (
                    free > 0 and not self._inflight
                ):
                    leased = await self._lease(min(free, cfg.batch_size))
                    busy = busy or len(leased) == min(free, cfg.batch_size)
                    for attempt in leased:
                        task = asyncio.create_task(self._deliver(attempt))
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
                await self._renew_parked()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + cfg.purge_interval_s
                    await self._purge()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("notifier: database error, retrying: %s", exc)
                busy = False
            if busy:
                continue
            await _wait(self._wake, cfg.poll_interval_s)

    async def _dispatch_loop(self, stop: asyncio.Event) -> None:
        """Fan out new outbox rows when NOTIFY says there are some, and on every poll."""
        cfg = self.config
        while not stop.is_set():
            self._dispatch_wake.clear()
            # Cleared before the query: a NOTIFY arriving meanwhile sets it again.
            self._outbox_dirty = False
            try:
                taken = await self.dispatch()
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("notifier: database error while dispatching, retrying: %s", exc)
                taken = 0
            if taken:
                self._wake.set()
            if taken >= cfg.batch_size or self._outbox_dirty:
                continue
            await _wait(self._dispatch_wake, cfg.poll_interval_s)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while True:
            await self._results_ready.wait()
            if self._results and not stop.is_set():
                # Let answers arriving together share one write.
                await asyncio.sleep(self.config.flush_interval_s)
            self._results_ready.clear()
            batch, self._results = self._results, []
            if batch:
                try:
                    await self._record(batch)
                except (asyncpg.PostgresError, OSError) as exc:
                    # The leases run out and the deliveries go again: at least once.
                    log.warning("notifier: could not record %d answers: %s", len(batch), exc)
                self._wake.set()
            if stop.is_set() and not self._inflight and not self._results:
                return

    # ------------------------------------------------------------------ steps

    async def _lease(self, limit: int) -> list[Attempt]:
        if limit <= 0:
            return []
        leased_at = time.monotonic()
        rows = await self.pool.fetch(
            _LEASE_SQL, limit, self.config.lease_s, self.name, self._gates.full(leased_at)
        )
        out = []
        for r in rows:
            self._gates.leased(r["endpoint_id"])
            secrets = (r["secret"],) + ((r["previous_secret"],) if r["previous_secret"] else ())
            out.append(
                Attempt(
                    delivery_id=r["delivery_id"],
                    tenant_id=r["tenant_id"],
                    attempt=r["attempt"],
                    endpoint_id=r["endpoint_id"],
                    url=r["url"],
                    secrets=secrets,
                    event_id=r["event_id"],
                    payload=r["payload"],
                    created_at=r["created_at"],
                    recording_id=r["recording_id"],
                    leased_at=leased_at,
                )
            )
        return out

    def _signer(self, secret: str) -> Webhook:
        signer = self._signers.get(secret)
        if signer is None:
            if len(self._signers) > 10_000:
                self._signers.clear()
            signer = self._signers[secret] = Webhook(secret)
        return signer

    def _checked(self, raw: str) -> WebhookUrl:
        verdict = self._urls.get(raw)
        if verdict is None:
            if len(self._urls) > 10_000:
                self._urls.clear()
            try:
                verdict = check_url(raw, self.guard.allow)
            except UnsafeUrl as exc:
                verdict = exc
            self._urls[raw] = verdict
        if isinstance(verdict, UnsafeUrl):
            raise verdict
        return verdict

    def _recording(self, attempt: Attempt, now: float) -> dict[str, Any] | None:
        return event_recording(
            self.settings.public_url,
            self._link_key,
            attempt.recording_id,
            int(now) + self.config.link_ttl_s,
        )

    async def _deliver(self, attempt: Attempt) -> None:
        endpoint = attempt.endpoint_id
        try:
            await self._send_slots.acquire()
            # Checked once a slot is ours: the endpoint may have turned slow meanwhile.
            gate = self._gates.enter(endpoint, time.monotonic())
            if gate is None:
                sent = await self._send_holding_slot(attempt)
            else:
                # A slow endpoint's attempt waits at its gate, then sends in a slot
                # of the slow endpoints' own: it never holds one of the others'.
                self._send_slots.release()
                try:
                    self._parked[(attempt.delivery_id, attempt.attempt)] = attempt
                    try:
                        await gate.acquire()
                    finally:
                        del self._parked[(attempt.delivery_id, attempt.attempt)]
                    try:
                        async with self._slow_slots:
                            self._slow_sending += 1
                            try:
                                sent = await self._send_timed(attempt, self._slow_stalled)
                            finally:
                                self._slow_sending -= 1
                    finally:
                        gate.release()
                finally:
                    self._gates.leave(endpoint)
        finally:
            self._gates.finished(endpoint)
        if sent:
            self._results.append(attempt)
            self._results_ready.set()

    async def _send_holding_slot(self, attempt: Attempt) -> bool:
        """Send in the slot held, then give it back (unless a stall gave it back already)."""
        try:
            return await self._send_timed(attempt, self._stalled)
        finally:
            if attempt.stalled:
                self._stalled_sends -= 1
            else:
                self._send_slots.release()

    async def _send_timed(self, attempt: Attempt, on_stall: Callable[[Attempt], None]) -> bool:
        """Send with a timer that calls ``on_stall`` past ``stall_after_s``; False if the
        lease was lost while the attempt waited."""
        if not await self._still_ours(attempt):
            return False  # its lease ran out while it waited: another attempt has it
        stall = asyncio.get_running_loop().call_later(self.config.stall_after_s, on_stall, attempt)
        try:
            await self._send(attempt)
        finally:
            stall.cancel()
        return True

    def _slow_stalled(self, attempt: Attempt) -> None:
        """A slow endpoint's send stalled again: it stays slow."""
        self._gates.mark_slow(attempt.endpoint_id, time.monotonic())

    def _stalled(self, attempt: Attempt) -> None:
        """A send ran past ``stall_after_s``: its endpoint is slow; its slot goes to others.

        The sockets held beyond the slots are bounded (``concurrency`` of
        them): past that, the send is cut short instead, a failed attempt
        retried on the schedule, so that no slot is ever held longer than
        ``stall_after_s`` by a receiver that does not answer.
        """
        self._gates.mark_slow(attempt.endpoint_id, time.monotonic())
        if self._stalled_sends < self.config.concurrency:
            attempt.stalled = True
            self._stalled_sends += 1
            self._send_slots.release()
        elif attempt.deadline is not None:
            attempt.cut_short = True
            attempt.deadline.reschedule(asyncio.get_running_loop().time())

    async def _renew_parked(self) -> None:
        """Renew the leases of attempts parked at a slow endpoint's gate before they run out."""
        now = time.monotonic()
        due = [
            a for a in self._parked.values() if now - a.leased_at >= self.config.lease_margin_s / 2
        ]
        if not due:
            return
        renewed = await self.pool.fetch(
            """UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $4)
               FROM unnest($1::bigint[], $2::int[]) AS u(id, attempts)
               WHERE d.id = u.id AND d.attempts = u.attempts AND d.leased_by = $3
                 AND d.status = 'pending'
               RETURNING d.id""",
            [a.delivery_id for a in due],
            [a.attempt for a in due],
            self.name,
            self.config.lease_s,
        )
        ids = {r["id"] for r in renewed}
        for attempt in due:
            if attempt.delivery_id in ids:
                attempt.leased_at = now

    async def _still_ours(self, attempt: Attempt) -> bool:
        """Renew the lease of an attempt that waited for its slot; False if it is lost.

        A lease covers one attempt's time (``lease_s``), not a wait for a slot
        as well: without this, slow receivers made the attempts waiting behind
        them outlive their leases, and each went twice. The wait is at most one
        send's time (twice the slots are leased), shorter than a lease.
        """
        if time.monotonic() - attempt.leased_at < self.config.lease_margin_s / 2:
            return True
        try:
            renewed = await self.pool.fetchval(
                """UPDATE webhook_deliveries
                   SET next_attempt_at = now() + make_interval(secs => $4)
                   WHERE id = $1 AND leased_by = $2 AND attempts = $3 AND status = 'pending'
                   RETURNING true""",
                attempt.delivery_id,
                self.name,
                attempt.attempt,
                self.config.lease_s,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("notifier: could not renew a lease, leaving it to run out: %s", exc)
            return False
        return bool(renewed)

    async def _send(self, attempt: Attempt) -> None:
        assert self._session is not None
        started = time.monotonic()
        attempt.started_at = time.time()
        try:
            url = self._checked(attempt.url)
            now = time.time()
            body = event_body(attempt.payload, attempt.created_at, self._recording(attempt, now))
            signers = [self._signer(s) for s in attempt.secrets]
            headers = webhook_headers(signers, str(attempt.event_id), int(now), body)
            # A deadline the stall timer may bring forward (see _stalled).
            async with asyncio.timeout(None) as attempt.deadline:
                async with self._session.post(
                    url.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    attempt.status_code = resp.status
                    raw = await resp.content.read(self.config.max_response_bytes)
                    attempt.excerpt = raw.decode("utf-8", "replace") or None
                    attempt.retry_after_s = parse_retry_after(
                        resp.headers.get("Retry-After"), time.time()
                    )
        except UnsafeUrl as exc:
            attempt.refused, attempt.error = True, f"refused: {exc.reason}"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                attempt.refused, attempt.error = True, f"refused: {exc.os_error.reason}"
            else:
                attempt.error = f"cannot connect: {exc.os_error}"
        except RefusedAddress as exc:
            attempt.refused, attempt.error = True, f"refused: {exc.reason}"
        except TimeoutError:
            attempt.error = "timed out"
            if attempt.cut_short:
                attempt.error = (
                    f"no answer within {self.config.stall_after_s:g} s while"
                    f" {self.config.concurrency} other sends were waiting for theirs: cut short"
                )
        except aiohttp.ClientError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
        except (UnicodeError, ValueError) as exc:
            attempt.error = f"cannot send: {exc}"
        except (OSError, RuntimeError) as exc:
            # uvloop may raise RuntimeError where asyncio raises OSError.
            attempt.error = f"cannot connect: {exc}"
        except Exception as exc:
            # Whatever the answer did to us, the attempt is recorded as failed and
            # retried, never left to run out its lease and go again unrecorded.
            log.exception("notifier: attempt %s failed in our code", attempt.delivery_id)
            attempt.error = f"internal error: {type(exc).__name__}"
        attempt.duration_ms = (time.monotonic() - started) * 1000.0
        attempt.ended_at = time.time()

    async def _record(self, batch: list[Attempt]) -> None:
        cfg = self.config
        verdicts = [
            judge_answer(
                a.attempt,
                a.status_code,
                refused=a.refused,
                retry_after_s=a.retry_after_s,
                config=cfg,
                rand=self.rng.random(),
            )
            for a in batch
        ]
        healthy: set[uuid.UUID] = set()
        failing: set[uuid.UUID] = set()
        gone: set[uuid.UUID] = set()
        for a, v in zip(batch, verdicts, strict=True):
            if v.outcome == "succeeded":
                healthy.add(a.endpoint_id)
                self.delivered += 1
            elif v.disable_endpoint:
                gone.add(a.endpoint_id)
            else:
                failing.add(a.endpoint_id)
        failing -= healthy
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                _RECORD_ATTEMPTS_SQL,
                [a.tenant_id for a in batch],
                [a.delivery_id for a in batch],
                [a.endpoint_id for a in batch],
                [a.event_id for a in batch],
                [a.attempt for a in batch],
                [a.url for a in batch],
                [a.started_at for a in batch],
                [a.ended_at for a in batch],
                [v.outcome for v in verdicts],
                [a.status_code for a in batch],
                [a.error for a in batch],
                [a.duration_ms for a in batch],
                [_clean(a.excerpt) for a in batch],
                [a.retry_after_s for a in batch],
                [v.delay_s for v in verdicts],
            )
            await conn.execute(
                _RECORD_DELIVERIES_SQL,
                [a.delivery_id for a in batch],
                [a.attempt for a in batch],
                [v.status for v in verdicts],
                [v.delay_s for v in verdicts],
                [a.status_code for a in batch],
                [a.error for a in batch],
            )
            if healthy:
                await conn.execute(
                    """UPDATE webhook_endpoints SET failing_since = NULL, last_success_at = now()
                       WHERE id = ANY ($1::uuid[])""",
                    list(healthy),
                )
            if failing or gone:
                await conn.execute(
                    """UPDATE webhook_endpoints
                       SET failing_since = coalesce(failing_since, now()), last_failure_at = now()
                       WHERE id = ANY ($1::uuid[])""",
                    list(failing | gone),
                )
                disabled = await conn.fetch(
                    _DISABLE_SQL, list(gone), list(failing), cfg.disable_after_s
                )
                for row in disabled:
                    await _notice_disabled(conn, row)

    async def _purge(self) -> None:
        removed = await purge_expired_recordings(self.pool, self.settings.recording_dir)
        if removed:
            log.info("deleted %d recordings past their retention", removed)
        await self.pool.execute(
            """DELETE FROM webhook_deliveries WHERE status <> 'pending'
               AND completed_at < now() - make_interval(secs => $1)""",
            self.config.delivery_retention_s,
        )


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Wait for ``event`` at most ``timeout_s``.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that
    arrives as the event is set, and a notifier that cannot be stopped is a bug.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a receiver's answer may.
    return text.replace("\x00", "\ufffd") if text else text


async def _notice_disabled(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """Tell the tenant: a notice row (GET /v1/notices) and a warning in the log."""
    message = f"webhook endpoint {row['url']} was disabled: {row['disabled_reason']}"
    log.warning("tenant %s: %s", row["tenant_id"], message)
    await conn.execute(
        """INSERT INTO tenant_notices (id, tenant_id, kind, subject_id, message, detail)
           VALUES ($1, $2, 'webhook_endpoint.disabled', $3, $4, $5)""",
        new_id(),
        row["tenant_id"],
        row["id"],
        message,
        {"endpoint_id": str(row["id"]), "url": row["url"], "reason": row["disabled_reason"]},
    )
