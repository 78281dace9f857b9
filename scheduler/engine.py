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

One workflow's failure (a bad setting the database refuses, a definition
whose branches loop, a bug) is that workflow's alone: it is logged and the
tick goes on with the others, the republishing and the lost workers. A
record whose step fails is ended as ``failed`` (outcome ``workflow_error``)
rather than holding back the rest of its workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from dialer.bus import Broker
from dialer.db import CLIENT_DATA_ERROR, DATABASE_AWAY
from dialer.messages import CallEvent, DialJob
from dialer.take_back import CHANNEL as TAKE_BACK_CHANNEL
from dialer.take_back import payloads as take_back_payloads
from scheduler.consumer import end_record, may_blame_record
from scheduler.pacing import DurationSummary, PacingMode, PacingStats, pace
from scheduler.policy import WorkflowPolicy
from scheduler.steps import (
    RECORD_COLUMNS,
    GraphCache,
    StepResult,
    Writes,
    action_context,
    apply_step,
    context_for,
    dial_job,
    record_zone,
    report_records_ended,
)
from scheduler.workflow import WORKFLOW_ERROR

__all__ = ["Scheduler", "TickResult"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TickResult:
    published: int = 0
    finished: int = 0
    deferred: int = 0
    republished: int = 0
    lost: int = 0
    failed_workflows: int = 0

    def add(self, other: TickResult) -> None:
        self.published += other.published
        self.finished += other.finished
        self.deferred += other.deferred


@dataclass(slots=True)
class _Failing:
    """A workflow failing tick after tick: logged again only now and then."""

    error: str
    ticks: int = 1
    logged_at: float = field(default_factory=time.monotonic)


def _away(exc: BaseException) -> bool:
    """The database (or the broker's connection) is away: everybody's failure, not one
    workflow's. asyncpg files a value it could not encode beside a lost connection."""
    return isinstance(exc, DATABASE_AWAY) and not isinstance(exc, CLIENT_DATA_ERROR)


class _RecordStepFailed(Exception):
    """A record's step failed in a batch of many: the batch is redone record by record."""


# The advisory lock class of "scheduling this workflow" (seats use 24231).
_SCHEDULE_LOCK_CLASS = 24232


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
        failure_log_every_s: float = 60.0,
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
        self._ticked = False
        self._judge_workers_from: float | None = None
        # Workflows whose scheduling fails, by id: a broken one fails every
        # tick, twice a second, and is logged in full once, then once a while.
        self.failure_log_every_s = failure_log_every_s
        self._failing: dict[uuid.UUID, _Failing] = {}

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
        if not self._ticked:
            # A scheduler (re)started, maybe during or just after an outage it
            # never saw: workers get the same time to beat before it judges any.
            self._ticked = True
            self._judge_workers_from = now + self.worker_timeout_s
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
            await self._schedule_isolated(workflow, now, result)
        # Workflows no longer active are not failing any more, merely gone.
        active = {w["id"] for w in workflows}
        for workflow_id in self._failing.keys() - active:
            del self._failing[workflow_id]
        try:
            await self._cancel_cancelled_lists_leftovers()
        except Exception as exc:
            if _away(exc):
                raise
            log.exception("ending the records left of cancelled lists failed")
        try:
            result.republished = await self._republish_stale(now)
        except Exception as exc:
            if _away(exc):
                raise
            log.exception("republishing stale dial jobs failed")
        if self._judge_workers_from is None or now >= self._judge_workers_from:
            try:
                result.lost = await self._close_lost_calls(now)
            except Exception as exc:
                if _away(exc):
                    raise
                log.exception("closing the calls of lost workers failed")
        return result

    async def _schedule_isolated(
        self, workflow: asyncpg.Record, now: float, result: TickResult
    ) -> None:
        """Schedule one workflow; its failure is logged and goes no further.

        The database or the broker being away is everybody's failure: it ends
        the tick, for the run loop to wait. Anything else (a setting the
        database refuses, a bug) is this workflow's. A record whose step fails
        rolls back its whole batch: the batch is then redone record by record,
        each in a savepoint, so that record alone is ended as failed.
        """
        part = TickResult()
        try:
            try:
                await self._schedule_workflow(workflow, now, part)
            except _RecordStepFailed:
                part = TickResult()
                await self._schedule_workflow(workflow, now, part, careful=True)
        except Exception as exc:
            if _away(exc):
                raise
            result.failed_workflows += 1
            self._workflow_failed(workflow, exc)
            return
        result.add(part)
        failing = self._failing.pop(workflow["id"], None)
        if failing is not None:
            log.info(
                "workflow %s schedules again after %d failed ticks",
                workflow["id"],
                failing.ticks,
                extra={"workflow_id": str(workflow["id"])},
            )

    def _workflow_failed(self, workflow: asyncpg.Record, exc: Exception) -> None:
        workflow_id = workflow["id"]
        error = f"{type(exc).__name__}: {exc}"
        extra = {"workflow_id": str(workflow_id), "tenant_id": str(workflow["tenant_id"])}
        failing = self._failing.get(workflow_id)
        if failing is None or failing.error != error:
            self._failing[workflow_id] = _Failing(error)
            log.error(
                "scheduling workflow %s failed; the tick goes on with the others",
                workflow_id,
                exc_info=exc,
                extra=extra,
            )
            return
        failing.ticks += 1
        if time.monotonic() - failing.logged_at >= self.failure_log_every_s:
            failing.logged_at = time.monotonic()
            log.error(
                "scheduling workflow %s still fails (%d ticks): %s",
                workflow_id,
                failing.ticks,
                error,
                extra=extra,
            )

    async def _budget(
        self, conn: asyncpg.Connection, workflow: asyncpg.Record, policy: WorkflowPolicy, now: float
    ) -> int:
        # A call may be taken back once it has *rung* cancel_ringing_after_s (the
        # FCC counts from the ring, not the dial), by the ringing stamp the worker
        # reported; a call already asked counts as in flight until it ends and is
        # not asked again. Calls taken back unanswered leave the answer-rate and
        # hold-time samples: cut short, they say nothing of either.
        after = policy.pacing.cancel_ringing_after_s
        # A queued call whose record has moved on (completed through the API
        # meanwhile) will never be dialled: the worker refuses it. It takes no
        # seat, and until the republishing ends it, it is not in flight. A call
        # never dialled (never claimed, expired before its INVITE, or refused at
        # the claim for the do-not-call list) was never an attempt: no sample.
        row = await conn.fetchrow(
            """WITH c AS (
                 SELECT c.*, (c.state IN ('dialing', 'ringing')
                              OR (c.state = 'queued' AND r.status = 'in_progress'
                                  AND r.last_call_id = c.id)) AS live,
                        -- An ended call that was really dialled and not cut short:
                        -- a sample of the answer rate and of the time a line is held.
                        (c.state = 'ended' AND c.dialing_at IS NOT NULL
                         AND c.disposition IS DISTINCT FROM 'expired'
                         AND c.disposition IS DISTINCT FROM 'dnc'
                         AND (c.end_reason IS DISTINCT FROM 'pacing'
                              OR c.answered_at IS NOT NULL)) AS sample
                 FROM calls c
                 LEFT JOIN records r ON c.state = 'queued' AND r.id = c.record_id
                 WHERE c.workflow_id = $1
                   AND (c.state <> 'ended' OR c.ended_at > now() - interval '1 hour'))
               SELECT
                 count(*) FILTER (WHERE live) AS in_flight,
                 count(*) FILTER (WHERE state = 'answered') AS talking,
                 coalesce(array_agg(
                     extract(epoch FROM now() - coalesce(dialing_at, ringing_at, now()))
                     ORDER BY id)
                     FILTER (WHERE live), '{}')
                     AS in_flight_ages,
                 coalesce(array_agg(id::text ORDER BY id)
                     FILTER (WHERE live), '{}')
                     AS in_flight_ids,
                 coalesce(array_agg(state = 'ringing' AND pacing_cancel_at IS NULL
                                    AND $2::float8 IS NOT NULL
                                    AND ringing_at <= now() - $2::float8 * interval '1 second'
                                    ORDER BY id)
                     FILTER (WHERE live), '{}')
                     AS cancellable,
                 count(*) FILTER (WHERE sample AND ended_at > now() - interval '1 hour')
                     AS finished,
                 count(*) FILTER (WHERE state = 'ended' AND answered_at IS NOT NULL
                                  AND ended_at > now() - interval '1 hour') AS answered,
                 coalesce(avg(extract(epoch FROM answered_at - dialing_at))
                     FILTER (WHERE answered_at IS NOT NULL), 0) AS ring_mean,
                 coalesce(stddev(extract(epoch FROM answered_at - dialing_at))
                     FILTER (WHERE answered_at IS NOT NULL), 0) AS ring_sd,
                 coalesce(avg(extract(epoch FROM ended_at - dialing_at))
                     FILTER (WHERE sample AND answered_at IS NULL), 0) AS hold_mean,
                 coalesce(stddev(extract(epoch FROM ended_at - dialing_at))
                     FILTER (WHERE sample AND answered_at IS NULL), 0) AS hold_sd,
                 coalesce(avg(extract(epoch FROM ended_at - answered_at))
                     FILTER (WHERE answered_at IS NOT NULL AND state = 'ended'), 0) AS handle_mean
               FROM c""",
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
        self, workflow: asyncpg.Record, now: float, result: TickResult, *, careful: bool = False
    ) -> None:
        """Take the workflow's due records and apply their steps, in one transaction.

        ``careful``: each record's step in a savepoint of its own, so that a
        step that fails is undone alone and its record ended as failed.
        """
        policy = WorkflowPolicy.from_settings(workflow["settings"])
        jobs: list[DialJob] = []
        async with self.pool.acquire() as conn, conn.transaction():
            # Schedulers side by side (a rolling deploy, a dedicated one for some
            # tenants) take turns per workflow: two budgets from one snapshot would
            # each spend the same free seats. The other one has this tick's turn.
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2::uuid::text))",
                _SCHEDULE_LOCK_CLASS,
                workflow["id"],
            ):
                return
            budget = await self._budget(conn, workflow, policy, now)
            # With no budget, only waits that end are taken: they cost nothing
            # unless they lead to a call, which then stays queued.
            statuses = ["queued", "waiting"] if budget else ["waiting"]
            # A cancelled list's records are cancelled with it; one that slipped
            # back to queued (its call ending as the list was cancelled) is
            # never dialled all the same.
            records = await conn.fetch(
                f"""SELECT {RECORD_COLUMNS} FROM records r
                    LEFT JOIN lists l ON l.id = r.list_id
                    WHERE r.workflow_id = $1 AND r.status = ANY($4::text[])
                      AND r.next_attempt_at <= to_timestamp($2)
                      AND (l.id IS NULL OR l.status <> 'cancelled')
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
                dnc_listed = record["phone_e164"] in dnc
                may_dial = len(jobs) < budget
                if careful:
                    outcome = await self._step_alone(conn, record, now, info, dnc_listed, may_dial)
                else:
                    try:
                        outcome = await self._step(writes, record, now, info, dnc_listed, may_dial)
                    except Exception as exc:
                        if not may_blame_record(exc):
                            raise
                        # The writes of the records before it are queued with
                        # whatever it queued before failing: all is undone.
                        raise _RecordStepFailed from exc
                jobs.extend(outcome.jobs)
                result.finished += outcome.finished
                result.deferred += outcome.deferred
            try:
                await writes.flush()
            except Exception as exc:
                if careful or not may_blame_record(exc):
                    raise
                # Some record's write the database refused (a wait beyond its
                # calendar, ...): which one, only record by record can tell.
                raise _RecordStepFailed from exc
        if jobs:
            unencodable = await self._publish(jobs)
            result.published += len(jobs) - len(unencodable)

    async def _step(
        self,
        writes: Writes,
        record: asyncpg.Record,
        now: float,
        info: Mapping[str, Any],
        dnc: bool,
        may_dial: bool,
    ) -> StepResult:
        """Decide a due record's step and queue its writes on ``writes``."""
        graph = await self.graphs.get(
            writes.conn, record["workflow_id"], record["workflow_version"]
        )
        zone = record_zone(record, graph.policy)[0]
        node = record["current_node"]
        if node is not None and graph.nodes[node]["type"] != "call":
            # A branch after a wait sees the last call and the bot's result, as it
            # would have right after the call.
            context = await action_context(writes.conn, record)
        else:
            context = context_for(record)
        attempts = record["attempts"]
        if node is None:
            step = graph.first_step(context, now, zone, attempts_total=attempts)
        else:
            step = graph.enter(node, context, now, zone, attempts_total=attempts)
        return await apply_step(
            writes.conn,
            record,
            graph,
            step,
            now,
            info,
            dnc=dnc,
            may_dial=may_dial,
            writes=writes,
        )

    async def _step_alone(
        self,
        conn: asyncpg.Connection,
        record: asyncpg.Record,
        now: float,
        info: Mapping[str, Any],
        dnc: bool,
        may_dial: bool,
    ) -> StepResult:
        """A record's step in a savepoint: if it fails, the record is ended as failed."""
        try:
            async with conn.transaction():
                writes = Writes(conn)
                outcome = await self._step(writes, record, now, info, dnc, may_dial)
                await writes.flush()
            return outcome
        except Exception as exc:
            if not may_blame_record(exc):
                raise
            log.error(
                "record %s of workflow %s: its workflow step failed (%s: %s); "
                "the record ends as failed (%s)",
                record["id"],
                record["workflow_id"],
                type(exc).__name__,
                exc,
                WORKFLOW_ERROR,
                exc_info=exc,
                extra={
                    "record_id": str(record["id"]),
                    "workflow_id": str(record["workflow_id"]),
                    "node_id": record["current_node"],
                },
            )
        writes = Writes(conn)
        await end_record(writes, record, info, "failed", WORKFLOW_ERROR)
        await writes.flush()
        return StepResult(finished=True)

    async def _publish(self, jobs: list[DialJob]) -> list[DialJob]:
        """Publish the jobs; return those that cannot be encoded, left unpublished.

        One such job (a record's data no encoder takes) must not hold back the
        others: it stays queued, and the stale-job pass ends its call and record.
        """
        encoded, unencodable = _encode(jobs)
        await self._publish_encoded(encoded)
        return unencodable

    async def _publish_encoded(self, encoded: list[tuple[str, bytes]]) -> None:
        if encoded:
            await self.broker.publish_jobs(encoded)
            # A call a worker is claiming right now is locked by that claim: skipped,
            # not waited for (it is leaving 'queued', where published_at matters), so
            # this never holds up a claim nor deadlocks with a batch of them.
            await self.pool.execute(
                """UPDATE calls c SET published_at = now()
                   FROM (SELECT id FROM calls WHERE id = ANY($1::uuid[]) AND state = 'queued'
                         FOR UPDATE SKIP LOCKED) AS free
                   WHERE c.id = free.id""",
                [uuid.UUID(call_id) for call_id, _ in encoded],
            )

    async def _cancel_cancelled_lists_leftovers(self) -> None:
        """Records of a cancelled list that came back to queued or waiting after the
        cancel (their call ended as it committed) end as the cancel ended the others."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE records r SET status = 'cancelled', outcome = 'list_cancelled',
                       completed_at = now(), updated_at = now()
                   FROM lists l, workflows w
                   WHERE l.status = 'cancelled' AND r.list_id = l.id AND w.id = r.workflow_id
                     AND r.status IN ('queued', 'waiting')
                     AND ($1::uuid[] IS NULL OR l.tenant_id = ANY($1::uuid[]))
                   RETURNING r.id, r.tenant_id, r.workflow_id, r.case_id, r.phone_e164,
                             r.attempts, r.meta, w.workflow_key""",
                self.tenant_ids,
            )
            # Reported as the cancel reported the others: one record.completed each.
            for workflow_key in {row["workflow_key"] for row in rows}:
                await report_records_ended(
                    conn,
                    [row for row in rows if row["workflow_key"] == workflow_key],
                    {"workflow_key": workflow_key},
                    "cancelled",
                    "list_cancelled",
                )

    async def _republish_stale(self, now: float) -> int:
        """Jobs whose publish never confirmed: publish again (the claim makes it safe).

        A queued call whose record has moved on (completed or cancelled through
        the API, or on to another call) is ended instead: every worker refuses
        to dial it, so republishing it would go on forever.

        Staleness and heartbeats are judged on the database's clock, the one
        clock every process shares.
        """
        rows = await self.pool.fetch(
            f"""SELECT c.id AS call_id, c.node_id, w.status AS workflow_status, {RECORD_COLUMNS}
                FROM calls c JOIN records r ON r.id = c.record_id
                JOIN workflows w ON w.id = c.workflow_id
                WHERE c.state = 'queued'
                  -- A paused workflow's calls wait, queued, for its resume.
                  AND w.status IN ('active', 'stopped')
                  AND ($2::uuid[] IS NULL OR c.tenant_id = ANY($2::uuid[]))
                  AND coalesce(c.published_at, c.created_at)
                      < now() - $1 * interval '1 second'
                LIMIT 500""",
            self.republish_after_s,
            self.tenant_ids,
        )
        jobs = []
        moved_on: list[uuid.UUID] = []
        stopped: list[asyncpg.Record] = []
        unexplained: list[asyncpg.Record] = []
        for row in rows:
            graph = await self.graphs.get(self.pool, row["workflow_id"], row["workflow_version"])
            node = graph.nodes.get(row["node_id"])
            if row["status"] != "in_progress" or row["last_call_id"] != row["call_id"]:
                moved_on.append(row["call_id"])
                continue
            if node is None or node.get("type") != "call":
                # A call row no call node of its workflow explains (written by
                # hand, or a damaged row): end it, and its record (failed),
                # through the consumer rather than stop the scheduler or leave
                # the record in progress.
                log.warning(
                    "closing queued call %s: no call node %r", row["call_id"], row["node_id"]
                )
                unexplained.append(row)
                continue
            if row["workflow_status"] == "stopped":
                # Never dialled, and never will be (no worker claims it): it ends
                # as the stop ended the queued records, through the consumer.
                stopped.append(row)
                continue
            jobs.append(
                dial_job(
                    row["call_id"], row, graph, row["node_id"], node, now, attempt=row["attempts"]
                )
            )
        encoded, unencodable = _encode(jobs)
        bad_ids = {job.call_id for job in unencodable}
        bad_rows = [r for r in rows if str(r["call_id"]) in bad_ids]
        if moved_on:
            await self._end_moved_on(moved_on)
        never_dialled = (
            [(r, "cancelled", "workflow_stopped") for r in stopped]
            + [(r, "failed", "no_call_node") for r in unexplained]
            + [(r, "failed", "unencodable_job") for r in bad_rows]
        )
        if never_dialled:
            await self._publish_system_ends(
                [
                    (r["call_id"], r["id"], r["tenant_id"], r["workflow_id"], "")
                    for r, _, _ in never_dialled
                ],
                [
                    {"disposition": d, "hangup_by": "system", "end_reason": why}
                    for _, d, why in never_dialled
                ],
                now,
                "never",
            )
            # Not sent again every tick while the consumer gets to them.
            await self.pool.execute(
                "UPDATE calls SET published_at = now() WHERE id = ANY($1::uuid[])",
                [r["call_id"] for r, _, _ in never_dialled],
            )
        await self._publish_encoded(encoded)
        return len(encoded)

    async def _end_moved_on(self, call_ids: list[uuid.UUID]) -> None:
        """End queued calls whose record no longer waits for them, and their node runs.

        The condition is read again under the row locks: a record does not come
        back to a call it left, but the read above was not locked. A call a
        worker is claiming is skipped (the claim refuses it; the next pass ends it).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            ended = await conn.fetch(
                """WITH gone AS (
                       SELECT c.id FROM calls c JOIN records r ON r.id = c.record_id
                       WHERE c.id = ANY($1::uuid[]) AND c.state = 'queued'
                         AND (r.status <> 'in_progress' OR r.last_call_id IS DISTINCT FROM c.id)
                       ORDER BY c.id FOR UPDATE OF c SKIP LOCKED)
                   UPDATE calls c SET state = 'ended', disposition = 'cancelled',
                       ended_at = now(), hangup_by = 'system',
                       sip_reason = 'never dialled: its record no longer waits for it'
                   FROM gone WHERE c.id = gone.id
                   RETURNING c.id, c.record_id, c.node_run_id""",
                call_ids,
            )
            await conn.execute(
                """UPDATE node_runs SET status = 'cancelled', outcome = 'cancelled',
                       ended_at = now()
                   WHERE id = ANY($1::uuid[]) AND status = 'running'""",
                [r["node_run_id"] for r in ended if r["node_run_id"] is not None],
            )
        for r in ended:
            log.info(
                "ended queued call %s of record %s: the record no longer waits for it",
                r["id"],
                r["record_id"],
                extra={"call_id": str(r["id"]), "record_id": str(r["record_id"])},
            )

    async def _publish_system_ends(
        self,
        calls: list[tuple[Any, Any, Any, Any, str | None]],
        data: list[dict[str, Any]],
        now: float,
        tag: str,
    ) -> None:
        """``ended`` events the scheduler writes for calls no worker will end: the
        consumer closes them and takes their records on as for any other end.
        ``calls``: (call id, record id, tenant id, workflow id, worker id)."""
        events = [
            CallEvent(
                call_id=str(call_id),
                record_id=str(record_id),
                tenant_id=str(tenant_id),
                workflow_id=str(workflow_id),
                kind="ended",
                at=now,
                worker_id=worker_id or "",
                data=end,
            )
            for (call_id, record_id, tenant_id, workflow_id, worker_id), end in zip(
                calls, data, strict=True
            )
        ]
        await self.broker.publish_events(
            [(e.routing_key, f"{e.call_id}:{tag}", e.to_bytes()) for e in events]
        )

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
                 -- Nobody could beat while the server was down: a restarted
                 -- database gives the workers the same time to beat again.
                 AND pg_postmaster_start_time() < now() - $1 * interval '1 second'
               LIMIT 500""",
            self.worker_timeout_s,
            self.tenant_ids,
        )
        if rows:
            await self._publish_system_ends(
                [
                    (r["id"], r["record_id"], r["tenant_id"], r["workflow_id"], r["worker_id"])
                    for r in rows
                ],
                [{"disposition": "worker_lost", "hangup_by": "system"}] * len(rows),
                now,
                "lost",
            )
            # A lost worker never releases its seats; free them for the living.
            await self.pool.execute(
                "DELETE FROM seats WHERE call_id = ANY($1::uuid[])", [r["id"] for r in rows]
            )
        return len(rows)


def _encode(jobs: list[DialJob]) -> tuple[list[tuple[str, bytes]], list[DialJob]]:
    """Each job's bytes, and the jobs that cannot be encoded (each logged once here)."""
    encoded, unencodable = [], []
    for job in jobs:
        try:
            encoded.append((job.call_id, job.to_bytes()))
        except (TypeError, ValueError, RecursionError) as exc:
            log.error(
                "the dial job of call %s cannot be encoded (%s); its call and record will be"
                " ended as failed",
                job.call_id,
                type(exc).__name__,
                extra={"call_id": job.call_id, "record_id": job.record_id},
            )
            unencodable.append(job)
    return encoded, unencodable
