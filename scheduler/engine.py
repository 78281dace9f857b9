"""The scheduler loop: due records become dial jobs, as many as pacing allows.

Each tick, for every active workflow: count its calls in flight, ask the
pacer how many more to dial, take that many due records with
``FOR UPDATE SKIP LOCKED`` (so several schedulers can run side by side),
apply their next step (calling windows and the do-not-call list are checked
here, just before the call row is created), commit, and only then publish
the dial jobs. A job whose publish failed leaves its call ``queued``; the
next tick republishes it, and the worker's claim on the call row makes a
duplicate harmless. Calls of workers that stopped sending heartbeats are
closed as ``worker_lost`` through the same path as any ended call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import asyncpg

from dialer.bus import Broker
from dialer.db import DATABASE_AWAY
from dialer.messages import CallEvent, DialJob
from dialer.take_back import CHANNEL as TAKE_BACK_CHANNEL
from dialer.take_back import payloads as take_back_payloads
from scheduler.pacing import DurationSummary, PacingMode, PacingStats, pace
from scheduler.policy import WorkflowPolicy
from scheduler.steps import (
    RECORD_COLUMNS,
    GraphCache,
    Writes,
    apply_step,
    context_for,
    dial_job,
    record_zone,
)

__all__ = ["Scheduler", "TickResult"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TickResult:
    published: int = 0
    finished: int = 0
    deferred: int = 0
    republished: int = 0
    lost: int = 0


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        *,
        batch_size: int = 500,
        tick_s: float = 0.5,
        republish_after_s: float = 30.0,
        worker_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        tenant_ids: Sequence[uuid.UUID] | None = None,
    ) -> None:
        self.pool = pool
        # A scheduler may serve some tenants only (a dedicated scheduler, or a test).
        self.tenant_ids = list(tenant_ids) if tenant_ids is not None else None
        self.broker = broker
        self.batch_size = batch_size
        # Ringing calls the predictive pacer has asked to hang up, since start.
        self.taken_back = 0
        self.tick_s = tick_s
        self.republish_after_s = republish_after_s
        self.worker_timeout_s = worker_timeout_s
        self.clock = clock
        self.graphs = GraphCache()
        # No worker's heartbeat could be written while the database was away:
        # after an outage, live workers get worker_timeout_s to beat again
        # before any is judged lost (else their calls would be retried while
        # still up, and people dialled twice).
        self._outage = False
        self._judge_workers_from: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.tick_s
        while not stop.is_set():
            try:
                await self.tick()
                backoff = self.tick_s
            except (asyncpg.PostgresError, *DATABASE_AWAY, ConnectionError) as exc:
                # The database or the broker is away: keep trying, gently.
                log.warning("scheduler tick failed: %s", exc)
                self._outage = True
                backoff = min(backoff * 2, 10.0)
            except Exception:
                # A bug or a bad row must not stop scheduling for everybody.
                log.exception("scheduler tick failed")
                backoff = min(backoff * 2, 10.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)

    async def tick(self) -> TickResult:
        result = TickResult()
        now = self.clock()
        if self._outage:
            self._outage = False
            self._judge_workers_from = now + self.worker_timeout_s
        workflows = await self.pool.fetch(
            """SELECT w.id, w.tenant_id, w.workflow_key, w.name, w.current_version, v.settings
               FROM workflows w JOIN workflow_versions v
                 ON v.workflow_id = w.id AND v.version = w.current_version
               WHERE w.status = 'active' AND w.deleted_at IS NULL
                 AND ($1::uuid[] IS NULL OR w.tenant_id = ANY($1::uuid[]))""",
            self.tenant_ids,
        )
        for workflow in workflows:
            try:
                await self._schedule_workflow(workflow, now, result)
            except (asyncpg.PostgresError, *DATABASE_AWAY, ConnectionError):
                raise
            except Exception:
                # A bug or a bad row in one workflow must not stop the others.
                log.exception("scheduling workflow %s failed", workflow["id"])
        result.republished = await self._republish_stale(now)
        if self._judge_workers_from is None or now >= self._judge_workers_from:
            result.lost = await self._close_lost_calls(now)
        return result

    async def _budget(
        self, conn: asyncpg.Connection, workflow: asyncpg.Record, policy: WorkflowPolicy, now: float
    ) -> int:
        # A call may be taken back once it has *rung* cancel_ringing_after_s (the
        # FCC counts from the ring, not the dial), by the ringing stamp the worker
        # reported; a call already asked counts as in flight until it ends and is
        # not asked again. Calls taken back unanswered leave the answer-rate and
        # hold-time samples: cut short, they say nothing of either.
        after = policy.pacing.cancel_ringing_after_s
        row = await conn.fetchrow(
            """SELECT
                 count(*) FILTER (WHERE state IN ('queued', 'dialing', 'ringing')) AS in_flight,
                 count(*) FILTER (WHERE state = 'answered') AS talking,
                 coalesce(array_agg(extract(epoch FROM now() - coalesce(dialing_at, now()))
                                    ORDER BY id)
                     FILTER (WHERE state IN ('queued', 'dialing', 'ringing')), '{}')
                     AS in_flight_ages,
                 coalesce(array_agg(id::text ORDER BY id)
                     FILTER (WHERE state IN ('queued', 'dialing', 'ringing')), '{}')
                     AS in_flight_ids,
                 coalesce(array_agg(state = 'ringing' AND pacing_cancel_at IS NULL
                                    AND $2::float8 IS NOT NULL
                                    AND ringing_at <= now() - $2::float8 * interval '1 second'
                                    ORDER BY id)
                     FILTER (WHERE state IN ('queued', 'dialing', 'ringing')), '{}')
                     AS cancellable,
                 count(*) FILTER (WHERE state = 'ended' AND ended_at > now() - interval '1 hour'
                                  AND (end_reason IS DISTINCT FROM 'pacing'
                                       OR answered_at IS NOT NULL))
                     AS finished,
                 count(*) FILTER (WHERE state = 'ended' AND answered_at IS NOT NULL
                                  AND ended_at > now() - interval '1 hour') AS answered,
                 coalesce(avg(extract(epoch FROM answered_at - dialing_at))
                     FILTER (WHERE answered_at IS NOT NULL), 0) AS ring_mean,
                 coalesce(stddev(extract(epoch FROM answered_at - dialing_at))
                     FILTER (WHERE answered_at IS NOT NULL), 0) AS ring_sd,
                 coalesce(avg(extract(epoch FROM ended_at - dialing_at))
                     FILTER (WHERE state = 'ended' AND answered_at IS NULL
                             AND end_reason IS DISTINCT FROM 'pacing'), 0) AS hold_mean,
                 coalesce(stddev(extract(epoch FROM ended_at - dialing_at))
                     FILTER (WHERE state = 'ended' AND answered_at IS NULL
                             AND end_reason IS DISTINCT FROM 'pacing'), 0) AS hold_sd,
                 coalesce(avg(extract(epoch FROM ended_at - answered_at))
                     FILTER (WHERE answered_at IS NOT NULL AND state = 'ended'), 0) AS handle_mean
               FROM calls WHERE workflow_id = $1
                 AND (state <> 'ended' OR ended_at > now() - interval '1 hour')""",
            workflow["id"],
            after,
        )
        # Abandonment is measured as the FCC rule measures it: over 30 days, as a
        # share of live answers (a machine is not a person waiting for a seat). The
        # runner ends a live answer that found no seat in time as 'abandoned'.
        window = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE answered_at IS NOT NULL
                                        AND disposition IS DISTINCT FROM 'machine') AS live,
                      count(*) FILTER (WHERE disposition = 'abandoned') AS abandoned
               FROM calls WHERE workflow_id = $1 AND state = 'ended'
                 AND ended_at > now() - interval '30 days'""",
            workflow["id"],
        )
        in_flight, talking = row["in_flight"], row["talking"]
        raw_pacing = (workflow["settings"] or {}).get("pacing") or {}
        if policy.pacing.mode is PacingMode.PROGRESSIVE:
            budget = policy.seats - in_flight - talking
        else:
            finished = row["finished"]
            stats = PacingStats(
                seats=policy.seats,
                seats_busy=min(policy.seats, talking),
                calls_in_flight=in_flight,
                answer_rate=(row["answered"] / finished) if finished else 0.0,
                answer_samples=finished,
                ring_to_answer=DurationSummary(
                    float(row["ring_mean"]), float(row["ring_sd"]), row["answered"]
                ),
                not_answered_hold=DurationSummary(
                    float(row["hold_mean"]), float(row["hold_sd"]), finished - row["answered"]
                ),
                handle=DurationSummary(float(row["handle_mean"]), 0.0, row["answered"]),
                window_live=window["live"],
                window_abandoned=window["abandoned"],
                target_abandon_rate=float(raw_pacing.get("abandon_target", 0.03)),
                in_flight_ages_s=tuple(float(a) for a in row["in_flight_ages"]),
            )
            # The wait the pacer plans for is the one the runner grants (seats.py).
            pacing = replace(
                policy.pacing,
                max_wait_s=float(raw_pacing.get("max_wait_s", policy.pacing.max_wait_s)),
            )
            # Off the event loop: with many calls in flight the exact laws take a while.
            decision = await asyncio.to_thread(pace, pacing, stats, now, row["cancellable"])
            budget = decision.dials
            if decision.cancel:
                asked = [row["in_flight_ids"][i] for i in decision.cancel]
                # The dials assumed every one of them gone: a call that ended or
                # was answered meanwhile was not marked, so it takes a dial back.
                budget -= len(asked) - await self._take_back(conn, asked)
        return max(0, min(budget, self.batch_size))

    async def _take_back(self, conn: asyncpg.Connection, call_ids: list[str]) -> int:
        """Mark the calls and ask their workers to hang them up, both at commit.

        Returns how many were still ringing and so were marked.
        """
        marked = await conn.fetch(
            """UPDATE calls SET pacing_cancel_at = now()
               WHERE id = ANY($1::uuid[]) AND state = 'ringing'
                 AND pacing_cancel_at IS NULL
               RETURNING id::text""",
            call_ids,
        )
        ids = [r["id"] for r in marked]
        for payload in take_back_payloads(ids):
            await conn.execute("SELECT pg_notify($1, $2)", TAKE_BACK_CHANNEL, payload)
        self.taken_back += len(ids)
        return len(ids)

    async def _schedule_workflow(
        self, workflow: asyncpg.Record, now: float, result: TickResult
    ) -> None:
        policy = WorkflowPolicy.from_settings(workflow["settings"])
        jobs: list[DialJob] = []
        async with self.pool.acquire() as conn, conn.transaction():
            budget = await self._budget(conn, workflow, policy, now)
            # With no budget, only waits that end are taken: they cost nothing
            # unless they lead to a call, which then stays queued.
            statuses = ["queued", "waiting"] if budget else ["waiting"]
            records = await conn.fetch(
                f"""SELECT {RECORD_COLUMNS} FROM records r
                    LEFT JOIN lists l ON l.id = r.list_id
                    WHERE r.workflow_id = $1 AND r.status = ANY($4::text[])
                      AND r.next_attempt_at <= to_timestamp($2)
                      AND (l.id IS NULL OR l.settings->>'start_at' IS NULL
                           OR (l.settings->>'start_at')::timestamptz <= to_timestamp($2))
                    ORDER BY coalesce((l.settings->>'priority')::int, 0) DESC,
                             r.next_attempt_at
                    LIMIT $3 FOR UPDATE OF r SKIP LOCKED""",
                workflow["id"],
                now,
                budget or 50,
                statuses,
            )
            if not records:
                return
            phones = list({r["phone_e164"] for r in records})
            dnc = {
                r["phone_e164"]
                for r in await conn.fetch(
                    "SELECT phone_e164 FROM dnc WHERE tenant_id = $1 AND phone_e164 = ANY($2)",
                    workflow["tenant_id"],
                    phones,
                )
            }
            info = {"workflow_key": workflow["workflow_key"], "name": workflow["name"]}
            # Every record's statements go out together: one round trip per kind
            # of statement for the whole batch, not three per record.
            writes = Writes(conn)
            for record in records:
                graph = await self.graphs.get(
                    conn, record["workflow_id"], record["workflow_version"]
                )
                zone = record_zone(record, graph.policy)[0]
                context = context_for(record)
                if record["current_node"] is None:
                    step = graph.first_step(context, now, zone)
                else:
                    step = graph.enter(record["current_node"], context, now, zone)
                outcome = await apply_step(
                    conn,
                    record,
                    graph,
                    step,
                    now,
                    info,
                    dnc=record["phone_e164"] in dnc,
                    may_dial=len(jobs) < budget,
                    writes=writes,
                )
                jobs.extend(outcome.jobs)
                result.finished += outcome.finished
                result.deferred += outcome.deferred
            await writes.flush()
        if jobs:
            await self._publish(jobs)
            result.published += len(jobs)

    async def _publish(self, jobs: list[DialJob]) -> None:
        await self.broker.publish_jobs([(job.call_id, job.to_bytes()) for job in jobs])
        # A call a worker is claiming right now is locked by that claim: skipped,
        # not waited for (it is leaving 'queued', where published_at matters), so
        # this never holds up a claim nor deadlocks with a batch of them.
        await self.pool.execute(
            """UPDATE calls c SET published_at = now()
               FROM (SELECT id FROM calls WHERE id = ANY($1::uuid[]) AND state = 'queued'
                     FOR UPDATE SKIP LOCKED) AS free
               WHERE c.id = free.id""",
            [uuid.UUID(job.call_id) for job in jobs],
        )

    async def _republish_stale(self, now: float) -> int:
        """Jobs whose publish never confirmed: publish again (the claim makes it safe).

        Staleness and heartbeats are judged on the database's clock, the one
        clock every process shares.
        """
        rows = await self.pool.fetch(
            f"""SELECT c.id AS call_id, c.node_id, {RECORD_COLUMNS}
                FROM calls c JOIN records r ON r.id = c.record_id
                WHERE c.state = 'queued'
                  AND ($2::uuid[] IS NULL OR c.tenant_id = ANY($2::uuid[]))
                  AND coalesce(c.published_at, c.created_at)
                      < now() - $1 * interval '1 second'
                LIMIT 500""",
            self.republish_after_s,
            self.tenant_ids,
        )
        jobs = []
        for row in rows:
            graph = await self.graphs.get(self.pool, row["workflow_id"], row["workflow_version"])
            node = graph.nodes.get(row["node_id"])
            if node is None or node.get("type") != "call":
                # A call row no call node of its workflow explains (written by
                # hand, or a damaged row): end it rather than stop the scheduler.
                log.warning(
                    "closing queued call %s: no call node %r", row["call_id"], row["node_id"]
                )
                await self.pool.execute(
                    """UPDATE calls SET state = 'ended', disposition = 'failed', ended_at = now(),
                           sip_reason = 'no such call node in its workflow'
                       WHERE id = $1 AND state = 'queued'""",
                    row["call_id"],
                )
                continue
            jobs.append(
                dial_job(
                    row["call_id"], row, graph, row["node_id"], node, now, attempt=row["attempts"]
                )
            )
        if jobs:
            await self._publish(jobs)
        return len(jobs)

    async def _close_lost_calls(self, now: float) -> int:
        """Calls held by a worker that stopped beating: end them as worker_lost."""
        rows = await self.pool.fetch(
            """SELECT c.id, c.record_id, c.tenant_id, c.workflow_id, c.worker_id
               FROM calls c LEFT JOIN workers w ON w.id = c.worker_id
               WHERE c.state IN ('dialing', 'ringing', 'answered')
                 AND ($2::uuid[] IS NULL OR c.tenant_id = ANY($2::uuid[]))
                 -- Only silence counts: a worker that stopped cleanly has its
                 -- calls' ended events in the queue, which must win.
                 AND (w.id IS NULL OR w.last_seen_at < now() - $1 * interval '1 second')
               LIMIT 500""",
            self.worker_timeout_s,
            self.tenant_ids,
        )
        events = [
            CallEvent(
                call_id=str(r["id"]),
                record_id=str(r["record_id"]),
                tenant_id=str(r["tenant_id"]),
                workflow_id=str(r["workflow_id"]),
                kind="ended",
                at=now,
                worker_id=r["worker_id"] or "",
                data={"disposition": "worker_lost", "hangup_by": "system"},
            )
            for r in rows
        ]
        if events:
            await self.broker.publish_events(
                [(e.routing_key, f"{e.call_id}:lost", e.to_bytes()) for e in events]
            )
            # A lost worker never releases its seats; free them for the living.
            await self.pool.execute(
                "DELETE FROM seats WHERE call_id = ANY($1::uuid[])", [r["id"] for r in rows]
            )
        return len(events)
