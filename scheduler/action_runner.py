"""The action runner: SMS, email and webhook nodes carried out, then the record moved on.

How an action travels:

1. *Rendered.* :func:`scheduler.steps.apply_step` stores the node's request
   (templates filled in) in ``actions`` and parks the record at the node,
   all inside the record's transaction; no network there.
2. *Leased.* Due actions are taken with ``FOR UPDATE SKIP LOCKED`` by pushing
   ``next_attempt_at`` past the longest attempt. A runner killed mid-action
   loses nothing: the lease runs out and any runner takes it again (at least
   once; every try carries the action's id as ``Idempotency-Key``, or as the
   email's ``Message-ID``, so a receiver can drop a duplicate).
3. *Performed.* SMS: a POST to the operator's gateway (``DIALER_SMS_URL``).
   Webhook nodes: the tenant's URL, checked by the URL guard (the same rules
   as webhooks, ``DIALER_WEBHOOK_ALLOW_HOSTS`` honoured) before the request and
   again on the address actually connected to. Email: SMTP with aiosmtplib.
   Connection errors, timeouts, 408/425/429 and 5xx are tried again after a
   back-off; anything else is final.
4. *Settled.* In one transaction: the node run gets its outcome and the
   answer's status or error, and the record takes the node's outcome edge
   through :meth:`WorkflowGraph.after` and :func:`apply_step`, exactly as the
   event consumer does after a call. A lease that ran out meanwhile (another
   runner took the action) is noticed and changes nothing.

Actions of a paused (or draft) workflow wait; those of a stopped workflow
are not performed, and their records are cancelled as the stop cancelled
the queued ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import aiosmtplib
import asyncpg
from aiohttp.abc import AbstractResolver

from dialer.ids import new_id
from scheduler.actions import (
    ActionPolicy,
    Gateways,
    HttpRequest,
    email_message,
    http_verdict,
    outcome_for,
    parse_retry_after,
    retry_delay_s,
    sms_http,
    webhook_http,
)
from scheduler.steps import RECORD_COLUMNS, GraphCache, action_context, apply_step, record_zone

__all__ = ["ActionRunner", "AttemptResult", "RunnerConfig", "UrlGuard"]

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "dialer_actions"
_USER_AGENT = "dialer-actions/0.1"


class UrlGuard(Protocol):
    """Judges tenant-chosen URLs (``api.notifier.AddressGuard`` is the one we use).

    ``check_url`` raises ``ValueError`` (with the reason) for a URL that may
    not be reached; the resolver and socket factory keep the connection to
    the addresses that passed, so a rebinding DNS answer gets nowhere.
    """

    async def check_url(self, raw: str) -> Any: ...

    def resolver(self) -> AbstractResolver: ...

    def socket_factory(self, addr_info: Any) -> socket.socket: ...


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """Timeouts, back-off and batching; tests shorten them."""

    policy: ActionPolicy = field(default_factory=ActionPolicy)
    connect_timeout_s: float = 5.0
    total_timeout_s: float = 20.0
    lease_margin_s: float = 20.0
    concurrency: int = 32
    batch_size: int = 100
    poll_interval_s: float = 1.0
    max_response_bytes: int = 512
    stop_grace_s: float = 5.0
    # Finished actions are deleted this long after they finished (their
    # requests hold people's names and message texts), at most this often.
    retention_s: float = 30 * 86400.0
    purge_interval_s: float = 3600.0
    purge_batch: int = 10_000

    @property
    def lease_s(self) -> float:
        return self.total_timeout_s + self.lease_margin_s


@dataclass(slots=True)
class AttemptResult:
    """What one try of an action came to."""

    ok: bool = False
    transient: bool = False
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after_s: float | None = None

    def detail(self) -> dict[str, Any]:
        found = {"status_code": self.status_code, "error": self.error, "response": self.response}
        return {k: v for k, v in found.items() if v is not None}


def _failed(error: str, *, transient: bool = False) -> AttemptResult:
    return AttemptResult(transient=transient, error=error)


_CLAIM_SQL = """
WITH due AS (
    SELECT a.id FROM actions a JOIN workflows w ON w.id = a.workflow_id
    WHERE a.status = 'pending' AND a.next_attempt_at <= now()
      AND w.status IN ('active', 'stopped')
      AND ($3::uuid[] IS NULL OR a.tenant_id = ANY($3::uuid[]))
    ORDER BY a.next_attempt_at
    LIMIT $1
    FOR UPDATE OF a SKIP LOCKED
)
UPDATE actions a
SET attempts = a.attempts + 1, leased_by = $2, updated_at = now(),
    next_attempt_at = now() + $4 * interval '1 second'
FROM due, records r, workflows w
WHERE a.id = due.id AND r.id = a.record_id AND w.id = a.workflow_id
RETURNING a.id, a.tenant_id, a.record_id, a.workflow_id, a.node_run_id, a.node_id, a.kind,
    a.request, a.attempts,
    (r.status = 'in_progress' AND r.current_node = a.node_id) AS record_open,
    w.status = 'stopped' AS workflow_stopped,
    (a.kind = 'sms' AND EXISTS (SELECT 1 FROM dnc d WHERE d.tenant_id = a.tenant_id
                                AND d.phone_e164 = r.phone_e164)) AS on_dnc
"""


class ActionRunner:
    """Performs pending actions; run one or several (in any processes) over one database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        gateways: Gateways,
        guard: UrlGuard,
        config: RunnerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
        tenant_ids: Sequence[uuid.UUID] | None = None,
    ) -> None:
        self.pool = pool
        self.gateways = gateways
        self.guard = guard
        self.config = config or RunnerConfig()
        self.clock = clock
        self.name = name or f"actions-{os.getpid()}-{new_id().hex[-8:]}"
        # A runner may serve some tenants only (a dedicated runner, or a test).
        self.tenant_ids = list(tenant_ids) if tenant_ids is not None else None
        self.graphs = GraphCache()
        self.performed = 0  # tries made by this runner
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._gateway_session: aiohttp.ClientSession | None = None
        self._webhook_session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ public

    async def __aenter__(self) -> ActionRunner:
        cfg = self.config
        timeout = aiohttp.ClientTimeout(
            total=cfg.total_timeout_s, sock_connect=cfg.connect_timeout_s
        )
        common: dict[str, Any] = {
            "timeout": timeout,
            "cookie_jar": aiohttp.DummyCookieJar(),  # never carry cookies between tenants
            "headers": {"User-Agent": _USER_AGENT},
        }
        # The SMS gateway is the operator's own choice: no URL rules apply to it.
        self._gateway_session = aiohttp.ClientSession(**common)
        connector = aiohttp.TCPConnector(
            limit=cfg.concurrency,
            resolver=self.guard.resolver(),
            socket_factory=self.guard.socket_factory,
            ttl_dns_cache=30,
        )
        self._webhook_session = aiohttp.ClientSession(connector=connector, **common)
        return self

    async def __aexit__(self, *_: object) -> None:
        for session in (self._gateway_session, self._webhook_session):
            if session is not None:
                await session.close()
        self._gateway_session = self._webhook_session = None

    async def run(self, stop: asyncio.Event) -> None:
        """Perform actions as they come due until ``stop`` is set."""
        cfg = self.config
        async with self:
            listener = await self.pool.acquire()
            try:
                await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
                stopper = asyncio.create_task(self._wake_on(stop))
                try:
                    await self._feed(stop)
                finally:
                    stopper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await stopper
                    if self._inflight:
                        _, pending = await asyncio.wait(self._inflight, timeout=cfg.stop_grace_s)
                        for task in pending:
                            task.cancel()  # its lease runs out; another runner retries it
                        await asyncio.gather(*pending, return_exceptions=True)
            finally:
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
                await self.pool.release(listener)

    async def purge(self) -> int:
        """Delete actions finished longer than the retention ago; the number deleted.

        In batches, so that no statement holds many row locks for long.
        """
        total = 0
        while True:
            deleted = await self.pool.fetchval(
                """WITH gone AS (
                       DELETE FROM actions WHERE id IN (
                           SELECT id FROM actions WHERE status <> 'pending'
                             AND completed_at < now() - make_interval(secs => $1)
                           LIMIT $2)
                       RETURNING 1)
                   SELECT count(*) FROM gone""",
                self.config.retention_s,
                self.config.purge_batch,
            )
            total += deleted
            if deleted < self.config.purge_batch:
                return total

    async def run_once(self) -> int:
        """Claim what is due now and carry it all out; the number of actions tried."""
        claims = await self._claim(self.config.batch_size)
        await asyncio.gather(*(self._handle(claim) for claim in claims))
        return len(claims)

    # ------------------------------------------------------------------ loop

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _feed(self, stop: asyncio.Event) -> None:
        cfg = self.config
        backoff = cfg.poll_interval_s
        next_purge = time.monotonic()
        while not stop.is_set():
            self._wake.clear()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + cfg.purge_interval_s
                try:
                    if removed := await self.purge():
                        log.info("deleted %d finished actions past their retention", removed)
                except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                    log.warning("purging finished actions failed: %s", exc)
            free = min(cfg.concurrency - len(self._inflight), cfg.batch_size)
            claims: list[asyncpg.Record] = []
            if free > 0:
                try:
                    claims = await self._claim(free)
                    backoff = cfg.poll_interval_s
                except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                    log.warning("claiming actions failed: %s", exc)
                    backoff = min(backoff * 2, 10.0)
            for claim in claims:
                task = asyncio.create_task(self._handle(claim))
                self._inflight.add(task)
                task.add_done_callback(self._finished)
            if free > 0 and len(claims) == free:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free

    async def _claim(self, limit: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            _CLAIM_SQL, limit, self.name, self.tenant_ids, self.config.lease_s
        )

    async def _handle(self, claim: asyncpg.Record) -> None:
        if not claim["record_open"] or claim["workflow_stopped"]:
            result = None  # not performed: the record moved on, or its workflow stopped
        else:
            try:
                result = await self._perform(claim)
            except Exception as exc:  # a bug must not send the action round forever
                log.exception("action %s failed unexpectedly", claim["id"])
                result = _failed(f"internal error: {type(exc).__name__}")
            self.performed += 1
        try:
            await self._settle(claim, result)
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            # Not recorded: the lease runs out and the action is tried again.
            log.warning("recording action %s failed: %s", claim["id"], exc)

    # ------------------------------------------------------------------ perform

    async def _perform(self, claim: asyncpg.Record) -> AttemptResult:
        request = claim["request"]
        kind = claim["kind"]
        if kind == "sms":
            if self.gateways.sms is None:
                return _failed("no SMS gateway configured (DIALER_SMS_URL)")
            if claim["on_dnc"]:
                return _failed("the number is on the do-not-call list")
            assert self._gateway_session is not None
            return await self._http(self._gateway_session, sms_http(request, self.gateways.sms))
        if kind == "email":
            return await self._email(request, claim["id"])
        try:
            await self.guard.check_url(request["url"])
        except ValueError as exc:
            return _failed(f"refused: {exc}")
        assert self._webhook_session is not None
        return await self._http(self._webhook_session, webhook_http(request))

    async def _http(self, session: aiohttp.ClientSession, req: HttpRequest) -> AttemptResult:
        try:
            async with session.request(
                req.method, req.url, data=req.body, headers=list(req.headers), allow_redirects=False
            ) as resp:
                raw = await resp.content.read(self.config.max_response_bytes)
                verdict = http_verdict(resp.status)
                return AttemptResult(
                    ok=verdict == "ok",
                    transient=verdict == "transient",
                    status_code=resp.status,
                    error=None if verdict == "ok" else f"HTTP {resp.status} {resp.reason or ''}",
                    response=raw.decode("utf-8", "replace") or None,
                    retry_after_s=parse_retry_after(resp.headers.get("Retry-After")),
                )
        except TimeoutError:
            return _failed("timed out", transient=True)
        except aiohttp.ClientConnectorError as exc:
            return _failed(f"cannot connect: {exc.os_error}", transient=True)
        except aiohttp.ClientError as exc:
            return _failed(f"{type(exc).__name__}: {exc}", transient=True)
        except (UnicodeError, ValueError) as exc:
            return _failed(f"cannot send: {exc}")
        except (OSError, RuntimeError) as exc:
            # uvloop may raise RuntimeError where asyncio raises OSError.
            return _failed(f"cannot connect: {exc}", transient=True)

    async def _email(self, request: dict[str, Any], action_id: uuid.UUID) -> AttemptResult:
        smtp, sender = self.gateways.smtp, self.gateways.email_from
        if smtp is None or not sender:
            return _failed("no SMTP server configured (DIALER_SMTP_URL)")
        message = email_message(request, sender, message_id=str(action_id), now=self.clock())
        try:
            answer = await aiosmtplib.send(
                message,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username,
                password=smtp.password,
                use_tls=smtp.use_tls,
                start_tls=smtp.start_tls,
                timeout=self.config.total_timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            return AttemptResult(
                transient=all(400 <= c < 500 for c in codes),
                status_code=codes[0] if codes else None,
                error=f"recipients refused: {exc}",
            )
        except aiosmtplib.SMTPResponseException as exc:
            # 4yz is "try again later" in SMTP (RFC 5321 §4.2.1); 5yz is final.
            return AttemptResult(
                transient=400 <= exc.code < 500,
                status_code=exc.code,
                error=f"SMTP {exc.code} {exc.message}",
            )
        except (aiosmtplib.SMTPException, TimeoutError, OSError) as exc:
            return _failed(f"{type(exc).__name__}: {exc}", transient=True)
        _, reply = answer
        return AttemptResult(ok=True, status_code=250, response=reply[:200] or None)

    # ------------------------------------------------------------------ settle

    async def _settle(self, claim: asyncpg.Record, result: AttemptResult | None) -> None:
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, leased_by, attempts FROM actions WHERE id = $1 FOR UPDATE",
                claim["id"],
            )
            if (
                row is None
                or row["status"] != "pending"
                or row["leased_by"] != self.name
                or row["attempts"] != claim["attempts"]
            ):
                return  # our lease ran out and another runner took the action: its answer wins
            if result is not None and result.transient and not result.ok:
                delay = retry_delay_s(self.config.policy, claim["attempts"], result.retry_after_s)
                if delay is not None:
                    await conn.execute(
                        """UPDATE actions SET leased_by = NULL, last_status = $2, last_error = $3,
                               next_attempt_at = now() + $4 * interval '1 second',
                               updated_at = now()
                           WHERE id = $1""",
                        claim["id"],
                        result.status_code,
                        result.error,
                        delay,
                    )
                    return
            record = await conn.fetchrow(
                f"SELECT {RECORD_COLUMNS} FROM records r WHERE r.id = $1 FOR UPDATE",
                claim["record_id"],
            )
            if result is None:
                await self._cancel(conn, claim, record)
                return
            await self._done(conn, claim, result, record, now)

    async def _cancel(
        self, conn: asyncpg.Connection, claim: asyncpg.Record, record: asyncpg.Record | None
    ) -> None:
        await conn.execute(
            """UPDATE actions SET status = 'cancelled', leased_by = NULL, completed_at = now(),
                   updated_at = now() WHERE id = $1""",
            claim["id"],
        )
        await conn.execute(
            """UPDATE node_runs SET status = 'cancelled', ended_at = now() WHERE id = $1
                 AND status = 'running'""",
            claim["node_run_id"],
        )
        if (
            claim["workflow_stopped"]
            and record is not None
            and record["status"] == "in_progress"
            and record["current_node"] == claim["node_id"]
        ):
            # As the stop did to the queued records: it will never move on now.
            await conn.execute(
                """UPDATE records SET status = 'cancelled', outcome = 'workflow_stopped',
                       completed_at = now(), updated_at = now() WHERE id = $1""",
                record["id"],
            )

    async def _done(
        self,
        conn: asyncpg.Connection,
        claim: asyncpg.Record,
        result: AttemptResult,
        record: asyncpg.Record | None,
        now: float,
    ) -> None:
        outcome = outcome_for(claim["kind"], result.ok)
        await conn.execute(
            """UPDATE actions SET status = 'done', outcome = $2, leased_by = NULL,
                   last_status = $3, last_error = $4, completed_at = now(), updated_at = now()
               WHERE id = $1""",
            claim["id"],
            outcome,
            result.status_code,
            result.error,
        )
        await conn.execute(
            """UPDATE node_runs SET status = $2, outcome = $3, ended_at = now(),
                   detail = detail || $4 WHERE id = $1""",
            claim["node_run_id"],
            "completed" if result.ok else "failed",
            outcome,
            {**result.detail(), "attempts": claim["attempts"]},
        )
        if (
            record is None
            or record["status"] != "in_progress"
            or record["current_node"] != claim["node_id"]
        ):
            return  # completed through the API (or moved) meanwhile: nothing to advance
        graph = await self.graphs.get(conn, record["workflow_id"], record["workflow_version"])
        workflow = await conn.fetchrow(
            "SELECT workflow_key, name FROM workflows WHERE id = $1", record["workflow_id"]
        )
        info = {"workflow_key": workflow["workflow_key"], "name": workflow["name"]}
        step = graph.after(
            claim["node_id"],
            outcome,
            await action_context(conn, record),
            now,
            record_zone(record, graph.policy)[0],
            attempts_total=record["attempts"],
        )
        await apply_step(conn, record, graph, step, now, info, may_dial=False)
