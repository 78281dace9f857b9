"""The dial worker: takes dial jobs up to its capacity, places them, reports them.

A job is acknowledged only after the call has ended and its ``ended`` event
is confirmed by the broker. The call slot (``capacity`` calls at once) is
freed as soon as the call is over, not when the confirm comes back (which
takes as long as a short call): a job awaiting its confirm holds no slot.
So the prefetch is ``capacity`` plus ``confirm_backlog`` jobs whose calls are
over and whose ends await their confirm; a job that arrives while every slot
is taken waits here, unclaimed, for the next one.

Nobody is called twice by accident: before dialling, the worker claims the
call row (``queued`` -> ``dialing``) in PostgreSQL; a redelivered or
republished job finds the call already claimed and is acknowledged without
dialling. A worker that dies mid-call stops beating; the scheduler then
closes its calls as ``worker_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Any, Protocol

import asyncpg
import orjson

from dialer.batching import Batcher
from dialer.bus import Broker, BrokerUnavailable, Delivery, Subscription
from dialer.db import DATABASE_AWAY, while_database_away
from dialer.messages import CallEvent, DialJob, MessageError, encode_events
from dialer.take_back import TakeBackListener

__all__ = ["CallRunner", "Claim", "Emit", "Worker", "storable"]

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


_NUL_ESCAPE = b"\\u0000"


def storable(value: Any) -> Any:
    """``value`` with every NUL character taken out of its strings and keys.

    PostgreSQL stores no NUL in text or jsonb; an ended event carries strings
    from the far end (a SIP reason phrase, a voicebot's result), and one the
    database refuses would leave the call's outcome unstored for good.
    """
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


class Claim(Enum):
    """What claiming a job's call row decided."""

    DIAL = "dial"
    DNC = "dnc"  # claimed, but the number is on the do-not-call list now
    SKIP = "skip"  # claimed already (a redelivery), or its record is no longer in progress


class CallRunner(Protocol):
    """Places one call and runs its handler; returns the ``ended`` event's data.

    ``emit(kind, data)`` publishes progress (ringing, answered, amd, dtmf).
    The returned mapping carries at least ``disposition``; also ``sip_status``,
    ``sip_reason``, ``hangup_by``, ``times`` (unix seconds by phase),
    ``ring_s``, ``talk_s``, ``amd_verdict``, ``bot_result``, ``media_stats``
    and ``recording`` where known.
    """

    async def run(self, job: DialJob, emit: Emit) -> dict[str, Any]: ...


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        runner: CallRunner,
        *,
        capacity: int = 100,
        worker_id: str | None = None,
        heartbeat_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        progress_delay_s: float = 0.0,
        claim_linger_s: float = 0.005,
        confirm_backlog: int | None = None,
        ended_batch: int = 64,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.runner = runner
        self.capacity = capacity
        # Jobs whose calls are over and whose ended events await the broker's
        # confirm, beyond the call slots (default: as many as the slots).
        self.confirm_backlog = capacity if confirm_backlog is None else max(0, confirm_backlog)
        self._slots = asyncio.Semaphore(max(1, capacity))
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        # Events are coalesced per call: a progress event is held this long and
        # dropped if the call ends meanwhile (its ended event carries every
        # phase's time), so short calls cost one event, not four.
        self.progress_delay_s = progress_delay_s
        self.active: set[str] = set()
        # Jobs holding a call slot (claiming, calling, or reporting the end):
        # the worker is idle when there are none.
        self._holding = 0
        # Set by drain(): a job waiting for a slot goes back to the queue.
        self._draining = False
        self._waiting = 0  # jobs waiting for a slot
        self.dialled = 0
        self.skipped = 0
        self._subscription: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # Jobs that arrive together (a refill of the prefetch) claim their calls
        # in one round trip; claim_linger_s gathers a little longer.
        self._claims: Batcher[tuple[uuid.UUID, uuid.UUID], Claim] = Batcher(
            self._claim_many, max_size=max(1, capacity), linger_s=claim_linger_s
        )
        # Ended events ready together go out as one message (see dialer.messages):
        # while one message awaits its confirm, the next gathers.
        self._ends: Batcher[CallEvent, None] = Batcher(
            self._publish_ends, max_size=ended_batch, concurrency=2
        )
        # The predictive pacer's requests to hang up ringing calls, for a
        # runner that can (``take_back(call_id) -> bool``).
        self._take_back: TakeBackListener | None = None
        if callable(getattr(runner, "take_back", None)):
            self._take_back = TakeBackListener(pool, self._take_back_call)
        self.taken_back = 0

    def _take_back_call(self, call_id: str) -> None:
        if call_id in self.active and self.runner.take_back(call_id):  # type: ignore[attr-defined]
            self.taken_back += 1

    async def start(self) -> None:
        await self.pool.execute(
            """INSERT INTO workers (id, host, pid, capacity) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO UPDATE SET last_seen_at = now(), stopped_at = NULL""",
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.capacity,
        )
        if self._take_back is not None:
            await self._take_back.start()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        self._subscription = await self.broker.consume_jobs(
            self._on_job, self.capacity + self.confirm_backlog
        )

    async def drain(self, timeout_s: float | None = None) -> None:
        """Take no new jobs; let the calls in progress finish; then stop.

        Jobs already delivered and waiting for a slot are not dialled: each goes
        back to the queue, unclaimed, when it would have got its slot.
        """
        self._draining = True
        if self._waiting:
            self._slots.release()  # wakes the waiters, one after the other
        if self._subscription is not None:
            await self._subscription.set_prefetch(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        await self.close()

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._take_back is not None:
            await self._take_back.close()
        await self._ends.close()
        await self._claims.close()
        with contextlib.suppress(asyncpg.PostgresError, *DATABASE_AWAY):
            await self.pool.execute(
                "UPDATE workers SET stopped_at = now() WHERE id = $1", self.worker_id
            )

    async def _beat(self) -> None:
        while True:
            try:
                await self.pool.execute(
                    "UPDATE workers SET last_seen_at = now() WHERE id = $1", self.worker_id
                )
            except (asyncpg.PostgresError, *DATABASE_AWAY) as exc:
                log.warning("heartbeat failed: %s", exc, extra={"worker_id": self.worker_id})
            if self._take_back is not None and not self._take_back.listening:
                # Its connection went with a database restart: listen again.
                try:
                    # Bounded, so that a pool with no connection to spare does
                    # not hold up the next heartbeat.
                    await asyncio.wait_for(self._take_back.start(), self.heartbeat_s)
                except (TimeoutError, asyncpg.PostgresError, *DATABASE_AWAY) as exc:
                    log.warning("take-back listener not restarted: %r", exc)
            await asyncio.sleep(self.heartbeat_s)

    def _event(
        self, job: DialJob, kind: str, data: dict[str, Any], at: float | None = None
    ) -> CallEvent:
        return CallEvent(
            call_id=job.call_id,
            record_id=job.record_id,
            tenant_id=job.tenant_id,
            workflow_id=job.workflow_id,
            kind=kind,
            at=self.clock() if at is None else at,
            worker_id=self.worker_id,
            data=data,
        )

    async def _publish(
        self, job: DialJob, kind: str, data: dict[str, Any], at: float | None = None
    ) -> None:
        event = self._event(job, kind, data, at)
        await self.broker.publish_events(
            [(event.routing_key, f"{job.call_id}:{kind}", event.to_bytes())]
        )

    async def _publish_ends(self, events: Sequence[CallEvent]) -> list[None]:
        """One message for the ended events at hand (raises BrokerUnavailable for all)."""
        first = events[0].call_id
        message_id = f"{first}:ended" if len(events) == 1 else f"{first}:ended+{len(events) - 1}"
        await self.broker.publish_events([("call.ended", message_id, encode_events(events))])
        return [None] * len(events)

    async def _progress(self, job: DialJob, kind: str, data: dict[str, Any], at: float) -> None:
        """Progress is for the live view and pacing: lost while the broker is away,
        never fatal (the ``ended`` event carries every phase's time)."""
        try:
            await self._publish(job, kind, data, at)
        except BrokerUnavailable as exc:
            log.warning("progress event %s not published: %s", kind, exc)

    async def _publish_ended(self, job: DialJob, data: dict[str, Any]) -> None:
        """The ``ended`` event is the call's outcome: publish it until the broker has it.

        Meanwhile the job stays unacknowledged; if our connection was lost, the
        job comes back (to us or another worker), finds its call claimed, and
        is acknowledged without dialling.
        """
        # orjson writes a NUL as \u0000: the walk is only for an end that has one.
        if _NUL_ESCAPE in orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS):
            data = storable(data)
        event = self._event(job, "ended", data)
        delay_s = 0.2
        while True:
            try:
                await self._ends.submit(event)
                return
            except BrokerUnavailable as exc:
                log.warning("ended event not published yet, retrying: %s", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    async def _claim(self, job: DialJob) -> Claim:
        """Claim the call row; while the database is away, keep trying.

        A claim whose commit succeeded but whose answer was lost with the
        connection is ours: the row carries this attempt's token, and the
        retry accepts a row already ``dialing`` under that token only. (Under
        the worker's id alone, a second copy of a job whose call this worker
        had finished, its end not yet stored, would dial the person again.)
        """
        token = uuid.uuid4()
        call_id = uuid.UUID(job.call_id)
        return await while_database_away(
            lambda: self._claims.submit((call_id, token)), what="claim"
        )

    async def _claim_many(self, claims: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> list[Claim]:
        """Claim the calls of jobs that arrived together: one statement for all.

        Only calls of active workflows are claimed (a paused workflow's call
        waits, queued, for its resume). The do-not-call list is read in the
        same statement: a number put on it after the job was planned is
        claimed but not dialled.
        """
        # Rows are locked in id order: two batches sharing calls (a job and its
        # republished copy at two workers) wait for each other, never deadlock.
        rows = await self.pool.fetch(
            """WITH asked AS (
                   SELECT c.id, u.token FROM calls c
                   JOIN unnest($1::uuid[], $2::uuid[]) AS u(id, token) ON u.id = c.id
                   ORDER BY c.id FOR UPDATE OF c)
               UPDATE calls c SET state = 'dialing', worker_id = $3, claim_token = a.token
               FROM asked a, records r, workflows w
               WHERE c.id = a.id AND r.id = c.record_id AND r.status = 'in_progress'
                 AND w.id = c.workflow_id AND w.status = 'active'
                 AND (c.state = 'queued' OR (c.state = 'dialing' AND c.claim_token = a.token))
               RETURNING c.id, c.claim_token, EXISTS (
                   SELECT 1 FROM dnc d
                   WHERE d.tenant_id = c.tenant_id AND d.phone_e164 = c.phone_e164) AS dnc""",
            [call_id for call_id, _ in claims],
            [token for _, token in claims],
            self.worker_id,
        )
        # The same call twice in one batch (a job and its republished copy): the
        # row was claimed once, under one of the two tokens; only that one dials.
        claimed = {(r["id"], r["claim_token"]): Claim.DNC if r["dnc"] else Claim.DIAL for r in rows}
        return [claimed.get(claim, Claim.SKIP) for claim in claims]

    async def _on_job(self, delivery: Delivery) -> None:
        try:
            job = DialJob.from_bytes(delivery.body)
            uuid.UUID(job.call_id)
        except (MessageError, ValueError) as exc:
            log.warning("dead-lettering an unreadable dial job: %s", exc)
            await delivery.dead_letter()
            return
        # Claimed only once a slot is ours: a job waiting here is not yet "dialing".
        if not await self._slot_unless_drained():
            # Delivered before the drain began: another worker will dial it.
            await delivery.requeue()
            return
        slot = True
        self._holding += 1
        self._idle.clear()
        try:
            claim = await self._claim(job)
            if claim is Claim.SKIP:
                # Already dialled (a redelivery), or its record was cancelled.
                self.skipped += 1
                self._slots.release()
                slot = False
                await delivery.ack()
                return
            self.active.add(job.call_id)
            try:
                data, progress = await self._call(job, dnc=claim is Claim.DNC)
                # The call is over: its slot is free while the end goes out. The
                # job stays unacknowledged until the broker confirms that end.
                self._slots.release()
                slot = False
                # Progress already on its way goes out before the end.
                await asyncio.gather(*progress, return_exceptions=True)
                await self._publish_ended(job, data)
                await delivery.ack()
            finally:
                self.active.discard(job.call_id)
        finally:
            if slot:
                self._slots.release()
            self._holding -= 1
            if not self._holding:
                self._idle.set()

    async def _slot_unless_drained(self) -> bool:
        """Wait for a call slot; False (holding none) once a drain has begun.

        A drain wakes the first waiter by a permit of its own; each waiter that
        finds the drain begun hands its permit on, so the jobs waiting for a
        slot go back at once rather than after a call in progress ends. No task
        per waiting job: a plain semaphore wait.
        """
        if self._draining:
            return False
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        if self._draining:
            self._slots.release()  # on to the next waiter
            return False
        return True

    async def _call(
        self, job: DialJob, *, dnc: bool = False
    ) -> tuple[dict[str, Any], set[asyncio.Task[None]]]:
        """Place the claimed call: the ended event's data, and progress still on its way."""
        progress: set[asyncio.Task[None]] = set()
        if dnc:
            # Put on the do-not-call list since the job was planned: not dialled.
            return {"disposition": "dnc", "hangup_by": "system"}, progress
        if job.not_after is not None and self.clock() > job.not_after:
            # The job waited in the queue past its window: not dialled.
            return {"disposition": "expired", "hangup_by": "system"}, progress
        self.dialled += 1
        loop = asyncio.get_running_loop()
        # Held progress is a timer, not a task: most calls end before it
        # fires, and then it is only cancelled.
        held: list[asyncio.TimerHandle] = []

        def send(kind: str, payload: dict[str, Any], at: float) -> None:
            task = loop.create_task(self._progress(job, kind, payload, at))
            progress.add(task)
            task.add_done_callback(progress.discard)

        async def emit(kind: str, payload: dict[str, Any]) -> None:
            # Returns at once: a held event must not hold up the call.
            at, delay_s = self.clock(), self.progress_delay_s
            if delay_s > 0:
                held.append(loop.call_later(delay_s, send, kind, payload, at))
            else:
                send(kind, payload, at)

        try:
            data = await self.runner.run(job, emit)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call failed", extra={"call_id": job.call_id})
            data = {"disposition": "failed", "hangup_by": "system"}
        finally:
            # Progress still held is dropped (the end carries its times).
            for handle in held:
                handle.cancel()
        return data, set(progress)
