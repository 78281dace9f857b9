"""Call events in, records moved on: the scheduler's half of the pipeline.

Progress events stamp the call row (dialing, ringing, answered). The
``ended`` event closes the call and its node run, decides the record's next
step (retry, next node, finish) and writes the outbox rows, all in one
transaction; the message is acknowledged only after the commit, and a
duplicate (a redelivery, or a worker_lost verdict racing the real end) finds
the call already ended and changes nothing.

Events are handled in batches (whatever is ready, up to ``batch_size``): one
transaction and one statement per kind of change for the whole batch, since
the per-call cost was the round trips and commits, not the rows. A batch that
fails for any reason but the database being away is retried event by event,
so one bad event fails alone. An ended call whose workflow step cannot be
applied (branches that loop, a bug) is still closed and reported, and its
record ends as failed (outcome ``workflow_error``): the call happened, and
dead-lettering its end would leave the record in progress and the call
dialing, to be taken for lost and dialled again.

A call that ends after its list was cancelled or its workflow stopped ends
its record as cancelled, as the cancel or the stop did the queued ones.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from dialer import jsonutil
from dialer.batching import Batcher
from dialer.bus import Broker, Delivery, Subscription
from dialer.db import CLIENT_DATA_ERROR, DATABASE_AWAY, while_database_away
from dialer.ids import new_id
from dialer.messages import CallEvent, MessageError, decode_events
from dialer.progress import CHANNEL as PROGRESS_CHANNEL
from dialer.progress import MAX_PAYLOAD as PROGRESS_MAX_PAYLOAD
from scheduler.actions import ActionError
from scheduler.steps import (
    RECORD_COLUMNS,
    GraphCache,
    Writes,
    apply_step,
    bot_context,
    complete_list_if_done,
    context_for,
    end_as_dnc,
    record_completed,
    record_zone,
)
from scheduler.workflow import WORKFLOW_ERROR, WorkflowLoopError

__all__ = [
    "EventConsumer",
    "call_completed_payload",
    "end_record",
    "is_transient",
    "may_blame_record",
]

log = logging.getLogger(__name__)

_STAMPS = {"dialing": "dialing_at", "ringing": "ringing_at", "answered": "answered_at"}
_STATES = {"dialing": "dialing", "ringing": "ringing", "answered": "answered"}
_ORDER = {"queued": 0, "dialing": 1, "ringing": 2, "answered": 3, "ended": 4}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def call_completed_payload(
    call: Mapping[str, Any], record: Mapping[str, Any], workflow: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "call_id": str(call["id"]),
        "record_id": str(record["id"]),
        "case_id": record["case_id"],
        "phone": record["phone_e164"],
        "workflow_id": str(record["workflow_id"]),
        "workflow_key": workflow["workflow_key"],
        "meta": record["meta"],
        "attempt": call["attempt"],
        "disposition": call["disposition"],
        "sip_status": call["sip_status"],
        "sip_reason": call["sip_reason"],
        "hangup_by": call["hangup_by"],
        "created_at": _iso(call["created_at"]),
        "ringing_at": _iso(call["ringing_at"]),
        "answered_at": _iso(call["answered_at"]),
        "ended_at": _iso(call["ended_at"]),
        "ring_s": call["ring_s"],
        "talk_s": call["talk_s"],
        "amd_verdict": call["amd_verdict"],
        "bot_result": call["bot_result"],
        "media_stats": call["media_stats"],
        "end_reason": call.get("end_reason"),
        # The predictive pacer hung the call up while it rang (scheduler.pacing, rule 5):
        # no_answer, or abandoned if the answer crossed our CANCEL.
        "pacing_cancelled": call.get("end_reason") == "pacing",
    }


def _progress_payload(call: asyncpg.Record, event: CallEvent, **extra: Any) -> str | None:
    """The live viewers' notification of how the call is going (None: too long to send)."""
    data = {
        "call_id": str(call["id"]),
        "record_id": str(call["record_id"]),
        "workflow_id": str(call["workflow_id"]),
        "phone": call["phone_e164"],
        "attempt": call["attempt"],
        "at": event.at,
        **extra,
    }
    # As notify_progress writes it; sent for the whole batch in one statement.
    payload = jsonutil.dumps(
        {"tenant_id": str(call["tenant_id"]), "type": f"call.{event.kind}", "data": data}
    )
    return payload if len(payload) < PROGRESS_MAX_PAYLOAD else None


# A batch's progress: each call's new state and first stamps, one statement.
_STAMP_CALLS = """
    UPDATE calls c SET state = u.state,
        dialing_at = coalesce(c.dialing_at, to_timestamp(u.dialing)),
        ringing_at = coalesce(c.ringing_at, to_timestamp(u.ringing)),
        answered_at = coalesce(c.answered_at, to_timestamp(u.answered))
    FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::float8[], $5::float8[])
         AS u(id, state, dialing, ringing, answered)
    WHERE c.id = u.id"""

# Notifications go out on commit in the order sent: the array's order.
_NOTIFY_ALL = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


class _BadEvent(Exception):
    """An event the database refused on its own (a value of the wrong type, ...)."""


# Errors that say nothing of the statement or its data: the same work may well
# succeed when tried again (a deadlock, a serialization failure, a lock timeout).
_RETRYABLE: tuple[type[BaseException], ...] = (
    asyncpg.TransactionRollbackError,
    asyncpg.LockNotAvailableError,
    asyncpg.InsufficientResourcesError,
)


def is_transient(exc: BaseException) -> bool:
    """The database is away or refused for a passing reason: not the work's fault.

    asyncpg files a value it could not encode beside a lost connection; that one
    is the work's fault.
    """
    if isinstance(exc, CLIENT_DATA_ERROR):
        return False
    return isinstance(exc, (*DATABASE_AWAY, *_RETRYABLE))


# What a record's own workflow or values can cause: its steps go round without
# end (a loop, the chained-steps limit), an action it cannot render, a value the
# database refuses (a wait past the calendar's end, ...).
_RECORD_FAULTS: tuple[type[BaseException], ...] = (
    WorkflowLoopError,
    ActionError,
    asyncpg.DataError,
)


def may_blame_record(exc: BaseException) -> bool:
    """Whether a record whose step raised ``exc`` may be ended as failed for it.

    Only for what the record's own workflow or values cause. Not for a passing
    failure, nor for a bug in our code or a statement the database cannot run
    at all (code and schema apart, after a deploy): those would fail every
    record in turn, where waiting for the fix loses none.
    """
    return isinstance(exc, _RECORD_FAULTS) and not is_transient(exc)


async def end_record(
    writes: Writes,
    record: asyncpg.Record,
    workflow: Mapping[str, Any],
    status: str,
    outcome: str,
) -> None:
    """End ``record`` outside its workflow graph (cancelled, or failed on a workflow error).

    As a record the graph finishes: its status and outcome, a record.completed
    event, and its list completed if this was the list's last open record. A
    cancelled list stays cancelled.
    """
    writes.add(
        """UPDATE records SET status = $2, outcome = $3, completed_at = now(),
               updated_at = now() WHERE id = $1""",
        record["id"],
        status,
        outcome,
    )
    record_completed(writes, record, workflow, status, outcome)
    if record["list_id"] is not None and (
        await writes.conn.fetchval("SELECT status FROM lists WHERE id = $1", record["list_id"])
        == "active"
    ):
        # The check reads the list's records: this one's new status first.
        await writes.flush()
        await complete_list_if_done(writes.conn, record, workflow)


# A batch's ended calls, closed in one statement; RETURNING gives the rows as ended.
_END_CALLS = """
    UPDATE calls c SET state = 'ended', disposition = u.disposition, sip_status = u.sip_status,
        sip_reason = u.sip_reason, hangup_by = u.hangup_by,
        amd_verdict = coalesce(u.amd_verdict, c.amd_verdict),
        bot_result = u.bot_result::jsonb, media_stats = u.media_stats::jsonb,
        dialing_at = coalesce(c.dialing_at, to_timestamp(u.dialing)),
        ringing_at = coalesce(c.ringing_at, to_timestamp(u.ringing)),
        answered_at = coalesce(c.answered_at, to_timestamp(u.answered)),
        ended_at = to_timestamp(u.ended), ring_s = u.ring_s, talk_s = u.talk_s,
        worker_id = coalesce(c.worker_id, nullif(u.worker_id, '')), end_reason = u.end_reason
    FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::float8[], $10::float8[], $11::float8[],
                $12::float8[], $13::float8[], $14::float8[], $15::text[], $16::text[])
         AS u(id, disposition, sip_status, sip_reason, hangup_by, amd_verdict, bot_result,
              media_stats, dialing, ringing, answered, ended, ring_s, talk_s, worker_id,
              end_reason)
    WHERE c.id = u.id
    RETURNING c.*"""

_END_NODE_RUNS = """
    UPDATE node_runs n SET status = 'completed', outcome = u.outcome, ended_at = now(),
        detail = n.detail || u.detail::jsonb
    FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, outcome, detail)
    WHERE n.id = u.id"""


def _json_text(value: Any) -> str | None:
    return None if value is None else jsonutil.dumps(value)


class EventConsumer:
    """Call events in batches: whatever is ready (up to ``batch_size``, gathered
    for at most ``linger_s``) is handled in one transaction with set-based
    statements, and each message is acknowledged only after that commit.

    ``concurrency`` batches may be in the database at once: a batch is some ten
    round trips, so one at a time is bound by their latency. Batches lock calls,
    then records, each in id order, so two of them wait for each other rather
    than deadlock; a batch that fails all the same is retried event by event."""

    QUEUE_SUFFIX = "scheduler.events"

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        *,
        prefetch: int | None = None,
        batch_size: int = 100,
        linger_s: float = 0.02,
        concurrency: int = 2,
    ) -> None:
        self.pool = pool
        self.broker = broker
        # More in hand than one batch (default three batches' worth): while a batch is
        # in the database, the next one gathers. With the prefetch equal to the
        # batch, a full batch held every event and the next could form only after
        # its commit and acks, so the consumer fell behind the workers.
        self.prefetch = 3 * batch_size if prefetch is None else prefetch
        self.graphs = GraphCache()
        self._subscription: Subscription | None = None
        self._batcher: Batcher[CallEvent, BaseException | None] = Batcher(
            self._handle_batch, max_size=batch_size, linger_s=linger_s, concurrency=concurrency
        )

    async def start(self) -> None:
        self._subscription = await self.broker.consume_events(
            f"{self.broker.namespace}.{self.QUEUE_SUFFIX}",
            ["call.dialing", "call.ringing", "call.answered", "call.amd", "call.ended"],
            self._on_delivery,
            self.prefetch,
        )

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        await self._batcher.close()

    async def _on_delivery(self, delivery: Delivery) -> None:
        """One message: one event, or a worker's ended events sent together.

        The readable events are handled even when others in the message are
        not; the message is then dead-lettered whole, and handling its events
        again later changes nothing (a duplicate changes nothing).
        """
        events, unreadable = decode_events(delivery.body)
        readable: list[CallEvent] = []
        for event in events:
            try:
                uuid.UUID(event.call_id)
            except ValueError as exc:
                unreadable.append(MessageError(f"bad call_id {event.call_id!r}: {exc}"))
            else:
                readable.append(event)
        # Held, not requeued, while the database is away: a requeue loop would
        # reach the queue's delivery limit and dead-letter a call's outcome.
        if len(readable) == 1:  # most messages: no task per event for gather
            results = [await self._submit(readable[0])]
        else:
            results = await asyncio.gather(*(self._submit(event) for event in readable))
        if unreadable:
            log.warning(
                "dead-lettering a call event message: %d of %d unreadable (%s)",
                len(unreadable),
                len(unreadable) + len(readable),
                unreadable[0],
            )
            await delivery.dead_letter()
            return
        for error in results:
            if error is not None:
                raise error  # requeued by the broker's task owner, dead-lettered in the end
        await delivery.ack()

    async def _submit(self, event: CallEvent) -> BaseException | None:
        return await while_database_away(lambda: self._batcher.submit(event), what="call event")

    async def handle(self, event: CallEvent) -> None:
        """Handle one event now, in a transaction of its own."""
        await self.handle_many([event])

    async def handle_many(
        self, events: Sequence[CallEvent], *, workflow_failed: bool = False
    ) -> None:
        """Handle ``events`` in one transaction (a duplicate changes nothing).

        ``workflow_failed``: the calls' records are not taken to their next
        step (it failed already) but ended as failed, outcome ``workflow_error``.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await self._apply(conn, events, workflow_failed=workflow_failed)

    async def _handle_batch(self, events: Sequence[CallEvent]) -> list[BaseException | None]:
        """One transaction for the batch; if it fails, each event alone, so that one
        bad event fails by itself and the rest go on."""
        failure: BaseException
        try:
            await self.handle_many(events)
            return [None] * len(events)
        except (asyncpg.DataError, CLIENT_DATA_ERROR) as exc:
            # A value asyncpg could not encode: the event's fault, not the
            # database being away (asyncpg files its own under InterfaceError).
            failure = _BadEvent(str(exc))
        except DATABASE_AWAY:
            raise  # every caller waits and submits again
        except Exception as exc:
            # A bug, or a workflow whose step cannot be taken, as much as a
            # statement the database refused: never the whole batch's fault.
            failure = exc
        if len(events) == 1:
            return [await self._without_step(events[0], failure)]
        results: list[BaseException | None] = []
        for event in events:
            results.extend(await self._handle_batch([event]))
        return results

    async def _without_step(self, event: CallEvent, failure: BaseException) -> BaseException | None:
        """An event that fails alone: close its call all the same, its record failed.

        Tried again without the record's next step, which is what fails unless
        the event itself is bad; then this fails the same way and the original
        failure stands. Not after a passing failure (a deadlock) nor one of the
        code's (see may_blame_record): the event is delivered again later.
        """
        if not may_blame_record(failure):
            return failure
        try:
            await self.handle_many([event], workflow_failed=True)
        except Exception as exc:
            if isinstance(exc, DATABASE_AWAY) and not isinstance(exc, CLIENT_DATA_ERROR):
                raise  # every caller waits and submits again
            log.exception(
                "call %s of record %s: its end cannot be stored (%s: %s)",
                event.call_id,
                event.record_id,
                type(failure).__name__,
                failure,
                extra={"call_id": event.call_id, "record_id": event.record_id},
            )
            return failure
        log.error(
            "call %s of record %s: the workflow step after the call failed; the call is "
            "stored and the record ends as failed (%s)",
            event.call_id,
            event.record_id,
            WORKFLOW_ERROR,
            exc_info=failure,
            extra={
                "call_id": event.call_id,
                "record_id": event.record_id,
                "workflow_id": event.workflow_id,
            },
        )
        return None

    async def _apply(
        self,
        conn: asyncpg.Connection,
        events: Sequence[CallEvent],
        *,
        workflow_failed: bool = False,
    ) -> None:
        # Rows locked in id order: batches that share calls cannot deadlock.
        ids = sorted({uuid.UUID(e.call_id) for e in events})
        calls = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT * FROM calls WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids
            )
        }
        states = {call_id: call["state"] for call_id, call in calls.items()}
        ending: dict[uuid.UUID, CallEvent] = {}
        # Progress is gathered and written once for the batch (a long call sends
        # three progress events, each was two round trips): per call, its latest
        # state and the first time of each stamp; the notifications in event order.
        stamps: dict[uuid.UUID, dict[str, float]] = {}
        notes: list[str | None] = []
        for event in events:
            call_id = uuid.UUID(event.call_id)
            call = calls.get(call_id)
            if call is None or states[call_id] == "ended" or call_id in ending:
                continue  # unknown, or a duplicate of an end already applied
            if event.kind == "ended":
                ending[call_id] = event
            elif event.kind == "amd":
                await conn.execute(
                    "UPDATE calls SET amd_verdict = $2 WHERE id = $1",
                    call_id,
                    event.data.get("verdict"),
                )
                notes.append(_progress_payload(call, event, verdict=event.data.get("verdict")))
            elif event.kind in _STAMPS and _ORDER[_STATES[event.kind]] > _ORDER[states[call_id]]:
                stamps.setdefault(call_id, {}).setdefault(_STAMPS[event.kind], event.at)
                states[call_id] = _STATES[event.kind]
                notes.append(_progress_payload(call, event))
            elif event.kind == "dialing" and states[call_id] == "dialing":
                # The worker's claim set the state; the INVITE's time is this
                # event's (a call may have waited for a trunk channel since).
                stamps.setdefault(call_id, {}).setdefault("dialing_at", event.at)
                notes.append(_progress_payload(call, event))
        if stamps:
            ordered = sorted(stamps)  # rows already locked; id order all the same
            await conn.execute(
                _STAMP_CALLS,
                ordered,
                [states[i] for i in ordered],
                *([stamps[i].get(column) for i in ordered] for column in _STAMPS.values()),
            )
        if sendable := [note for note in notes if note is not None]:
            await conn.execute(_NOTIFY_ALL, PROGRESS_CHANNEL, sendable)
        if ending:
            await self._end(
                conn, [(calls[i], e) for i, e in ending.items()], workflow_failed=workflow_failed
            )

    async def _end(
        self,
        conn: asyncpg.Connection,
        ending: list[tuple[asyncpg.Record, CallEvent]],
        *,
        workflow_failed: bool = False,
    ) -> None:
        """Close the calls, their node runs and records' steps: set-based, one statement
        per kind for the whole batch."""
        columns: list[list[Any]] = [[] for _ in range(16)]
        runs: list[list[Any]] = [[], [], []]
        for call, event in ending:
            data = event.data
            times = data.get("times", {})
            disposition = data.get("disposition") or "failed"
            row = (
                call["id"],
                disposition,
                data.get("sip_status"),
                data.get("sip_reason"),
                data.get("hangup_by"),
                data.get("amd_verdict"),
                _json_text(data.get("bot_result")),
                _json_text(data.get("media_stats")),
                times.get("dialing"),
                times.get("ringing"),
                times.get("answered"),
                times.get("ended", event.at),
                data.get("ring_s"),
                data.get("talk_s"),
                event.worker_id,
                data.get("end_reason"),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            if call["node_run_id"] is not None:
                runs[0].append(call["node_run_id"])
                runs[1].append(disposition)
                runs[2].append(
                    jsonutil.dumps(
                        {"sip_status": data.get("sip_status"), "hangup_by": data.get("hangup_by")}
                    )
                )
        ended = {r["id"]: r for r in await conn.fetch(_END_CALLS, *columns)}
        if runs[0]:
            await conn.execute(_END_NODE_RUNS, *runs)
        record_ids = sorted({call["record_id"] for call, _ in ending})
        records = {
            r["id"]: r
            for r in await conn.fetch(
                f"""SELECT {RECORD_COLUMNS} FROM records r WHERE r.id = ANY($1::uuid[])
                    ORDER BY r.id FOR UPDATE""",
                record_ids,
            )
        }
        workflows: dict[uuid.UUID, dict[str, Any]] = {}
        # Why a record must stop when its call ends: what the API did to the
        # queued records, in its words.
        halts: dict[uuid.UUID, str] = {}
        for r in await conn.fetch(
            "SELECT id, workflow_key, name, status FROM workflows WHERE id = ANY($1::uuid[])",
            list({call["workflow_id"] for call, _ in ending}),
        ):
            workflows[r["id"]] = {"workflow_key": r["workflow_key"], "name": r["name"]}
            if r["status"] == "stopped":
                halts[r["id"]] = "workflow_stopped"
        list_ids = list({r["list_id"] for r in records.values() if r["list_id"] is not None})
        cancelled_lists: set[uuid.UUID] = set()
        if list_ids:  # records in no list need no look-up
            cancelled_lists = {
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM lists WHERE id = ANY($1::uuid[]) AND status = 'cancelled'",
                    list_ids,
                )
            }
        writes = Writes(conn)
        for call, event in ending:
            record = records.get(call["record_id"])
            if record is None:
                continue  # the record was deleted meanwhile: nothing to report on
            halt = (
                "list_cancelled"
                if record["list_id"] in cancelled_lists
                else halts.get(record["workflow_id"])
            )
            await self._ended(
                writes,
                call,
                ended[call["id"]],
                record,
                workflows[call["workflow_id"]],
                event,
                halt=halt,
                workflow_failed=workflow_failed,
            )
        await writes.flush()

    async def _ended(
        self,
        writes: Writes,
        call: asyncpg.Record,
        ended: asyncpg.Record,
        record: asyncpg.Record,
        info: dict[str, Any],
        event: CallEvent,
        *,
        halt: str | None = None,
        workflow_failed: bool = False,
    ) -> None:
        """One ended call's outbox rows and its record's next step, queued on ``writes``.

        ``halt``: the record's list was cancelled or its workflow stopped (the
        outcome to give it). ``workflow_failed``: its next step failed already.
        """
        data = event.data
        disposition = ended["disposition"]
        recording = data.get("recording")
        if isinstance(recording, dict) and recording.get("path"):
            recording_id = new_id()
            writes.add(
                """INSERT INTO recordings (id, tenant_id, call_id, path, bytes, duration_s, sha256)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                recording_id,
                call["tenant_id"],
                call["id"],
                str(recording["path"]),
                int(recording.get("bytes") or 0),
                float(recording.get("duration_s") or 0.0),
                recording.get("sha256"),
            )
            writes.event(
                tenant_id=call["tenant_id"],
                event_type="recording.available",
                record_id=call["record_id"],
                workflow_id=call["workflow_id"],
                payload={
                    "recording_id": str(recording_id),
                    "call_id": str(call["id"]),
                    "record_id": str(call["record_id"]),
                    "duration_s": recording.get("duration_s"),
                    "sha256": recording.get("sha256"),
                },
            )
        writes.event(
            tenant_id=call["tenant_id"],
            event_type="call.completed",
            record_id=call["record_id"],
            workflow_id=call["workflow_id"],
            payload=call_completed_payload(ended, record, info),
        )
        opted_out = ended["end_reason"] == "opt_out"
        if opted_out:
            # The person pressed the opt-out key of the abandoned-call message.
            writes.add(
                """INSERT INTO dnc (tenant_id, phone_e164, reason) VALUES ($1, $2, $3)
                   ON CONFLICT (tenant_id, phone_e164) DO NOTHING""",
                call["tenant_id"],
                call["phone_e164"],
                f"opt-out key on call {call['id']}",
            )
        if record["status"] != "in_progress" or record["last_call_id"] != call["id"]:
            return  # completed by the API or cancelled meanwhile: nothing to advance
        if opted_out or disposition == "dnc":
            # Opted out now, or on the list since the job was planned (not dialled).
            await end_as_dnc(writes, record, info)
            return
        if halt is not None:
            # Calls in progress finish; their records go no further.
            await end_record(writes, record, info, "cancelled", halt)
            return
        if disposition == "expired":
            # Never dialled (it waited in the queue past its window): not an attempt.
            writes.add(
                """UPDATE records SET status = 'queued', next_attempt_at = now(),
                       attempts = greatest(attempts - 1, 0),
                       node_attempts = greatest(node_attempts - 1, 0), updated_at = now()
                   WHERE id = $1""",
                record["id"],
            )
            return
        if workflow_failed:
            await end_record(writes, record, info, "failed", WORKFLOW_ERROR)
            return
        graph = await self.graphs.get(
            writes.conn, record["workflow_id"], record["workflow_version"]
        )
        node = graph.nodes.get(call["node_id"])
        if node is None or node.get("type") != "call":
            # No call node of the workflow explains this call (a damaged row):
            # there is no next step to take from it.
            log.error(
                "call %s of record %s: no call node %r in its workflow; the record fails",
                call["id"],
                record["id"],
                call["node_id"],
                extra={"call_id": str(call["id"]), "record_id": str(record["id"])},
            )
            await end_record(writes, record, info, "failed", WORKFLOW_ERROR)
            return
        zone = record_zone(record, graph.policy)[0]
        context = context_for(
            record,
            call={"outcome": disposition, "disposition": disposition, **_call_fields(ended)},
            result=bot_context(data.get("bot_result")),
        )
        step = graph.after_call(
            call["node_id"],
            disposition,
            record["node_attempts"],
            context,
            event.at,
            zone,
            attempts_total=record["attempts"],
        )
        await apply_step(
            writes.conn, record, graph, step, event.at, info, may_dial=False, writes=writes
        )


def _call_fields(call: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sip_status": call["sip_status"],
        "hangup_by": call["hangup_by"],
        "amd_verdict": call["amd_verdict"],
        "talk_s": call["talk_s"],
        "ring_s": call["ring_s"],
    }
