"""Carrying out a workflow step on a record, inside the caller's transaction.

Shared by the scheduler loop (records that came due) and the event consumer
(records whose call just ended): both hold the record's row lock, decide the
next step with :class:`scheduler.workflow.WorkflowGraph`, and apply it here,
writing node runs, calls and outbox rows in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import asyncpg

from dialer.ids import new_id
from dialer.messages import DialJob
from dialer.outbox import OutboxRow, outbox_row, write_events
from scheduler.actions import ActionError, outcome_for, render_action
from scheduler.policy import WorkflowPolicy
from scheduler.timezones import zones_for
from scheduler.windows import is_open, next_open, open_until
from scheduler.workflow import (
    Context,
    Finish,
    PlaceCall,
    RetryCall,
    RunNode,
    Step,
    WaitUntil,
    WorkflowGraph,
    WorkflowLoopError,
    render,
)

__all__ = [
    "GraphCache",
    "RecordRow",
    "StepResult",
    "Writes",
    "action_context",
    "apply_step",
    "bot_context",
    "complete_list_if_done",
    "context_for",
    "dial_job",
    "end_as_dnc",
    "record_completed",
    "record_zone",
    "report_records_ended",
]

RECORD_COLUMNS = """r.id, r.tenant_id, r.workflow_id, r.workflow_version, r.list_id, r.case_id,
    r.phone_e164, r.first_name, r.last_name, r.zip_code, r.placeholders, r.meta, r.status,
    r.current_node, r.attempts, r.node_attempts, r.last_call_id"""
RecordRow: TypeAlias = asyncpg.Record
MAX_CHAINED_STEPS = 20


class Writes:
    """The writes of many records' steps, sent together in the caller's transaction.

    A step's statements are queued here instead of being sent one by one;
    :meth:`flush` sends each distinct statement once for all its rows (one
    pipelined ``executemany``) and the outbox rows in one insert. Statements
    go out in the order each was first queued, which keeps every record's
    own order where it matters (a node run before the call that names it).
    Anything that reads what a step wrote flushes first.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._statements: dict[str, list[tuple[Any, ...]]] = {}
        self._outbox: list[OutboxRow] = []

    def add(self, sql: str, *args: Any) -> None:
        self._statements.setdefault(sql, []).append(args)

    def event(
        self,
        *,
        tenant_id: uuid.UUID,
        event_type: str,
        payload: dict[str, Any],
        record_id: uuid.UUID | None = None,
        workflow_id: uuid.UUID | None = None,
    ) -> None:
        self._outbox.append(
            outbox_row(
                tenant_id=tenant_id,
                event_type=event_type,
                payload=payload,
                record_id=record_id,
                workflow_id=workflow_id,
            )
        )

    async def flush(self) -> None:
        statements, self._statements = self._statements, {}
        outbox, self._outbox = self._outbox, []
        for sql, rows in statements.items():
            if len(rows) == 1:
                await self.conn.execute(sql, *rows[0])
            else:
                await self.conn.executemany(sql, rows)
        await write_events(self.conn, outbox)


class GraphCache:
    """Workflow graphs by (workflow id, version): versions never change once written."""

    def __init__(self) -> None:
        self._graphs: dict[tuple[uuid.UUID, int], WorkflowGraph] = {}

    async def get(
        self, conn: asyncpg.Connection | asyncpg.Pool, workflow_id: uuid.UUID, version: int
    ) -> WorkflowGraph:
        key = (workflow_id, version)
        graph = self._graphs.get(key)
        if graph is None:
            row = await conn.fetchrow(
                """SELECT definition, settings FROM workflow_versions
                   WHERE workflow_id = $1 AND version = $2""",
                workflow_id,
                version,
            )
            graph = WorkflowGraph(row["definition"], WorkflowPolicy.from_settings(row["settings"]))
            self._graphs[key] = graph
        return graph


def record_zone(record: Mapping[str, Any], policy: WorkflowPolicy) -> tuple[str, ...]:
    return zones_for(record["phone_e164"], record["zip_code"], policy.default_zone)


def context_for(
    record: Mapping[str, Any],
    call: Mapping[str, Any] | None = None,
    result: Mapping[str, Any] | None = None,
) -> Context:
    phone = record["phone_e164"]
    return Context(
        record={
            "id": str(record["id"]),
            "first_name": record["first_name"],
            "last_name": record["last_name"],
            "phone": phone,
            "phone_number": phone[2:] if phone.startswith("+1") else phone,
            "zip_code": record["zip_code"],
            "case_id": record["case_id"],
            "attempts": record["attempts"],
        },
        placeholders=record["placeholders"] or {},
        meta=record["meta"] or {},
        call=call or {},
        result=result or {},
    )


@dataclass(slots=True)
class StepResult:
    jobs: list[DialJob] = field(default_factory=list)
    finished: bool = False
    deferred: bool = False  # a call step left for later (window closed or no budget)


def record_completed(
    w: Writes,
    record: RecordRow,
    workflow: Mapping[str, Any],
    status: str,
    outcome: str,
) -> None:
    w.event(
        tenant_id=record["tenant_id"],
        event_type="record.completed",
        record_id=record["id"],
        workflow_id=record["workflow_id"],
        payload={
            "record_id": str(record["id"]),
            "case_id": record["case_id"],
            "phone": record["phone_e164"],
            "workflow_id": str(record["workflow_id"]),
            "workflow_key": workflow.get("workflow_key"),
            "status": status,
            "outcome": outcome,
            "attempts": record["attempts"],
            "meta": record["meta"],
        },
    )


async def report_records_ended(
    conn: asyncpg.Connection,
    records: Sequence[Mapping[str, Any]],
    workflow: Mapping[str, Any],
    status: str,
    outcome: str,
) -> None:
    """A record.completed event for each record ended outside a workflow step.

    For records cancelled (list cancelled, workflow stopped) or completed
    through the API: ``records`` need ``id``, ``tenant_id``, ``workflow_id``,
    ``case_id``, ``phone_e164``, ``attempts`` and ``meta``; ``workflow`` its
    ``workflow_key``. The events commit with the caller's transaction.
    """
    w = Writes(conn)
    for record in records:
        record_completed(w, record, workflow, status, outcome)
    await w.flush()


async def _finish(w: Writes, record: RecordRow, step: Finish, workflow: Mapping[str, Any]) -> None:
    w.add(
        """UPDATE records SET status = $2, outcome = $3, current_node = $4,
               completed_at = now(), updated_at = now() WHERE id = $1""",
        record["id"],
        "failed" if step.status == "failed" else "completed",
        step.outcome,
        step.node_id,
    )
    if step.node_id is not None:
        _node_run(w, record, step.node_id, "end", "completed", step.outcome)
    status = "failed" if step.status == "failed" else "completed"
    record_completed(w, record, workflow, status, step.outcome)
    if record["list_id"] is not None:
        await _maybe_complete_list(w, record, workflow)


async def end_as_dnc(w: Writes, record: RecordRow, workflow: Mapping[str, Any]) -> None:
    """End a record whose number is on the do-not-call list: status and outcome ``dnc``."""
    w.add(
        """UPDATE records SET status = 'dnc', outcome = 'dnc', completed_at = now(),
               updated_at = now() WHERE id = $1""",
        record["id"],
    )
    record_completed(w, record, workflow, "dnc", "dnc")
    if record["list_id"] is not None:
        await _maybe_complete_list(w, record, workflow)


async def complete_list_if_done(
    conn: asyncpg.Connection, record: Mapping[str, Any], workflow: Mapping[str, Any]
) -> None:
    """Record the completion of ``record``'s list if no record of it is open any more.

    For changes made outside a workflow step (a record completed or deleted
    through the API): ``record`` needs ``list_id``, ``tenant_id``,
    ``workflow_id``, ``case_id`` and ``phone_e164``; ``workflow`` its ``name``.
    """
    if record["list_id"] is None:
        return
    w = Writes(conn)
    await _maybe_complete_list(w, record, workflow)
    await w.flush()


async def _maybe_complete_list(w: Writes, record: RecordRow, workflow: Mapping[str, Any]) -> None:
    # The check reads the list's records: this batch's changes to them first.
    await w.flush()
    conn = w.conn
    # The list row lock serialises the check between records finishing at once.
    lst = await conn.fetchrow(
        "SELECT id, name, status FROM lists WHERE id = $1 FOR UPDATE", record["list_id"]
    )
    if lst is None or lst["status"] != "active":
        # Completed already, or cancelled: a cancelled list never becomes completed.
        return
    still_open = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM records WHERE list_id = $1
               AND status IN ('queued', 'waiting', 'in_progress'))""",
        lst["id"],
    )
    if still_open:
        return
    await conn.execute(
        """UPDATE lists SET status = 'completed', completed_at = now(), updated_at = now()
           WHERE id = $1""",
        lst["id"],
    )
    rows = await conn.fetch(
        """SELECT n.id, n.record_id, n.node_id, n.node_type, r.case_id, r.phone_e164
           FROM node_runs n JOIN records r ON r.id = n.record_id
           WHERE r.list_id = $1 ORDER BY n.started_at LIMIT 10000""",
        lst["id"],
    )
    w.event(
        tenant_id=record["tenant_id"],
        event_type="list.completed",
        workflow_id=record["workflow_id"],
        payload={
            "list_id": str(lst["id"]),
            "list_name": lst["name"],
            "workflow_id": str(record["workflow_id"]),
            "workflow_name": workflow.get("name"),
            "case_id": record["case_id"],
            "callee_number": record["phone_e164"],
            "rows": [
                {
                    "nodetask_id": str(r["id"]),
                    "task_id": str(r["record_id"]),
                    "nodetask_name": r["node_id"],
                    "node_type": r["node_type"],
                }
                for r in rows
            ],
        },
    )


def _node_run(
    w: Writes,
    record: RecordRow,
    node_id: str,
    node_type: str,
    status: str,
    outcome: str | None,
    detail: dict[str, Any] | None = None,
) -> uuid.UUID:
    run_id = new_id()
    w.add(
        """INSERT INTO node_runs (id, tenant_id, record_id, workflow_id, node_id, node_type,
               status, outcome, detail, ended_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                   CASE WHEN $7 = 'running' THEN NULL ELSE now() END)""",
        run_id,
        record["tenant_id"],
        record["id"],
        record["workflow_id"],
        node_id,
        node_type,
        status,
        outcome,
        detail or {},
    )
    return run_id


async def action_context(conn: asyncpg.Connection, record: RecordRow) -> Context:
    """The record's context with its last call and the bot's result, as templates see them."""
    call = None
    if record["last_call_id"] is not None:
        call = await conn.fetchrow(
            """SELECT disposition, sip_status, hangup_by, amd_verdict, talk_s, ring_s, bot_result
               FROM calls WHERE id = $1""",
            record["last_call_id"],
        )
    if call is None:
        return context_for(record)
    fields = dict(call)
    result = bot_context(fields.pop("bot_result"))
    return context_for(record, call={"outcome": fields["disposition"], **fields}, result=result)


def bot_context(bot: Any) -> dict[str, Any]:
    """The bot's result as branch conditions see it: ``result.<key>``, ``result.tags``."""
    if not isinstance(bot, dict):
        return {}
    values = bot.get("values")
    return {
        **(values if isinstance(values, dict) else {}),
        "tags": bot.get("tags") or [],
        "bot_outcome": bot.get("outcome"),
    }


async def _park_for_action(w: Writes, record: RecordRow, step: RunNode, context: Context) -> bool:
    """Store the action node's rendered request and park the record until it is done.

    The network is never touched here, inside the record's transaction: the
    action runner performs the request and advances the record. Parked, the
    record is ``in_progress`` at the action node, which the scheduler's due
    query never takes and a list counts as still open. False when the node
    failed at once (nothing the network could change).
    """
    kind = step.node["type"]
    action_id = new_id()
    try:
        request = render_action(
            step.node,
            context,
            phone_e164=record["phone_e164"],
            extra={
                "action_id": str(action_id),
                "node_id": step.node_id,
                "workflow_id": str(record["workflow_id"]),
                "record_id": str(record["id"]),
                "case_id": record["case_id"],
            },
        )
    except ActionError as exc:
        _node_run(
            w,
            record,
            step.node_id,
            kind,
            "failed",
            outcome_for(kind, ok=False),
            {"error": exc.reason},
        )
        return False
    run_id = _node_run(
        w, record, step.node_id, kind, "running", None, {"action_id": str(action_id)}
    )
    w.add(
        """INSERT INTO actions (id, tenant_id, record_id, workflow_id, node_run_id, node_id,
               kind, request)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        action_id,
        record["tenant_id"],
        record["id"],
        record["workflow_id"],
        run_id,
        step.node_id,
        kind,
        request,
    )
    w.add(
        """UPDATE records SET status = 'in_progress', current_node = $2, node_attempts = 0,
               updated_at = now() WHERE id = $1""",
        record["id"],
        step.node_id,
    )
    return True


def _place_call(
    w: Writes,
    record: RecordRow,
    graph: WorkflowGraph,
    node_id: str,
    node: Mapping[str, Any],
    now: float,
    *,
    node_attempts: int,
) -> DialJob:
    call_id = new_id()
    run_id = _node_run(w, record, node_id, "call", "running", None, {"call_id": str(call_id)})
    w.add(
        """INSERT INTO calls (id, tenant_id, record_id, workflow_id, node_run_id, node_id,
               attempt, phone_e164, state)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued')""",
        call_id,
        record["tenant_id"],
        record["id"],
        record["workflow_id"],
        run_id,
        node_id,
        record["attempts"] + 1,
        record["phone_e164"],
    )
    w.add(
        """UPDATE records SET status = 'in_progress', current_node = $2,
               attempts = attempts + 1, node_attempts = $3, last_call_id = $4,
               updated_at = now() WHERE id = $1""",
        record["id"],
        node_id,
        node_attempts + 1,
        call_id,
    )
    return dial_job(call_id, record, graph, node_id, node, now, attempt=record["attempts"] + 1)


def dial_job(
    call_id: uuid.UUID,
    record: RecordRow,
    graph: WorkflowGraph,
    node_id: str,
    node: Mapping[str, Any],
    now: float,
    *,
    attempt: int,
) -> DialJob:
    """The job for one call of ``record`` at ``node_id``: all a worker needs to place it."""
    context = context_for(record)
    handler = dict(node.get("handler", {}))
    if handler.get("type") == "prompt" and "text" in handler:
        handler["text"] = render(handler["text"], context)
    return DialJob(
        call_id=str(call_id),
        record_id=str(record["id"]),
        tenant_id=str(record["tenant_id"]),
        workflow_id=str(record["workflow_id"]),
        node_id=node_id,
        phone_e164=record["phone_e164"],
        attempt=attempt,
        ring_timeout_s=float(node.get("ring_timeout_s", 30)),
        max_duration_s=float(node.get("max_duration_s", 3600)),
        handler=handler,
        amd=dict(node.get("amd", {})),
        record=bool(node.get("record", graph.policy.recording)),
        context={
            "record": dict(context.record),
            "placeholders": context.placeholders,
            "meta": context.meta,
            "script": render(node.get("script", ""), context),
        },
        not_after=_dial_by(record, graph.policy, now),
        trunk=graph.policy.trunk,
    )


# A job that waited in the queue longer than this is not dialled (the scheduler
# plans again with what it knows then).
JOB_TTL_S = 300.0


def _dial_by(record: RecordRow, policy: WorkflowPolicy, now: float) -> float:
    """The last moment a worker may dial the job: its time to live, cut short by the
    person's calling window (and the legal floor) closing before that."""
    ttl = dt.timedelta(seconds=JOB_TTL_S)
    country = 1 if record["phone_e164"].startswith("+1") else None
    closes = open_until(
        policy.window,
        record_zone(record, policy),
        dt.datetime.fromtimestamp(now, dt.UTC),
        ttl,
        country_code=country,
    )
    return now + JOB_TTL_S if closes is None else min(now + JOB_TTL_S, closes.timestamp())


async def apply_step(
    conn: asyncpg.Connection,
    record: RecordRow,
    graph: WorkflowGraph,
    step: Step,
    now: float,
    workflow: Mapping[str, Any],
    *,
    dnc: bool = False,
    may_dial: bool = True,
    node_attempts: int | None = None,
    writes: Writes | None = None,
) -> StepResult:
    """Apply ``step`` (and the steps it chains into) to a locked record row.

    With ``writes``, the step's statements are queued there for the caller
    to flush with other records' (before its transaction commits); without,
    they are sent before this returns.
    """
    w = writes if writes is not None else Writes(conn)
    result = await _apply(w, record, graph, step, now, workflow, dnc, may_dial, node_attempts)
    if writes is None:
        await w.flush()
    return result


async def _apply(
    w: Writes,
    record: RecordRow,
    graph: WorkflowGraph,
    step: Step,
    now: float,
    workflow: Mapping[str, Any],
    dnc: bool,
    may_dial: bool,
    node_attempts: int | None,
) -> StepResult:
    result = StepResult()
    attempts_here = record["node_attempts"] if node_attempts is None else node_attempts
    for _ in range(MAX_CHAINED_STEPS):
        if isinstance(step, Finish):
            await _finish(w, record, step, workflow)
            result.finished = True
            return result
        if isinstance(step, WaitUntil):
            _node_run(w, record, step.node_id, "wait", "completed", "next", {"until": step.at})
            _defer(w, record, step.node_id, step.at, "waiting", node_attempts=0)
            return result
        if isinstance(step, RetryCall):
            _defer(w, record, step.node_id, step.at, "queued", node_attempts=attempts_here)
            return result
        if isinstance(step, RunNode):
            context = await action_context(w.conn, record)
            if await _park_for_action(w, record, step, context):
                return result
            # It cannot be carried out for this record at all (no address, ...):
            # the node has failed already, and the workflow takes its failure edge.
            step = graph.after(
                step.node_id,
                outcome_for(step.node["type"], ok=False),
                context,
                now,
                record_zone(record, graph.policy)[0],
                attempts_total=record["attempts"],
            )
            attempts_here = 0
            continue
        assert isinstance(step, PlaceCall)
        if step.node_id != record["current_node"]:
            attempts_here = 0
        if dnc:
            _node_run(w, record, step.node_id, "call", "cancelled", "dnc")
            await end_as_dnc(w, record, workflow)
            result.finished = True
            return result
        zones = record_zone(record, graph.policy)
        country = 1 if record["phone_e164"].startswith("+1") else None
        instant = dt.datetime.fromtimestamp(now, dt.UTC)
        if not is_open(graph.policy.window, zones, instant, country_code=country):
            opens = next_open(graph.policy.window, zones, instant, country_code=country)
            at = opens.timestamp() if opens is not None else now + 86400
            _defer(w, record, step.node_id, at, "queued", node_attempts=attempts_here)
            result.deferred = True
            return result
        if not may_dial:
            _defer(w, record, step.node_id, now, "queued", node_attempts=attempts_here)
            result.deferred = True
            return result
        job = _place_call(
            w, record, graph, step.node_id, step.node, now, node_attempts=attempts_here
        )
        result.jobs.append(job)
        return result
    raise WorkflowLoopError(f"record {record['id']}: more than {MAX_CHAINED_STEPS} chained steps")


def _defer(
    w: Writes,
    record: RecordRow,
    node_id: str,
    at: float,
    status: str,
    *,
    node_attempts: int,
) -> None:
    w.add(
        """UPDATE records SET status = $2, current_node = $3, next_attempt_at = to_timestamp($4),
               node_attempts = $5, updated_at = now() WHERE id = $1""",
        record["id"],
        status,
        node_id,
        at,
        node_attempts,
    )


def unix_now() -> float:
    return time.time()
