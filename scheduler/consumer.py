"""Call events in, records moved on: the scheduler's half of the pipeline.

Progress events stamp the call row (dialing, ringing, answered). The
``ended`` event closes the call and its node run, decides the record's next
step (retry, next node, finish) and writes the outbox rows, all in one
transaction; the message is acknowledged only after the commit, and a
duplicate (a redelivery, or a worker_lost verdict racing the real end) finds
the call already ended and changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from dialer.bus import Broker, Delivery, Subscription
from dialer.db import while_database_away
from dialer.ids import new_id
from dialer.messages import CallEvent, MessageError
from dialer.outbox import write_event
from dialer.progress import notify_progress
from scheduler.steps import RECORD_COLUMNS, GraphCache, apply_step, context_for, record_zone

__all__ = ["EventConsumer", "call_completed_payload"]

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
    }


async def _progress(
    conn: asyncpg.Connection, call: asyncpg.Record, event: CallEvent, **extra: Any
) -> None:
    """Tell live viewers, on commit, how the call is going."""
    data = {
        "call_id": str(call["id"]),
        "record_id": str(call["record_id"]),
        "workflow_id": str(call["workflow_id"]),
        "phone": call["phone_e164"],
        "attempt": call["attempt"],
        "at": event.at,
        **extra,
    }
    await notify_progress(conn, call["tenant_id"], f"call.{event.kind}", data)


class EventConsumer:
    QUEUE_SUFFIX = "scheduler.events"

    def __init__(self, pool: asyncpg.Pool, broker: Broker, *, prefetch: int = 100) -> None:
        self.pool = pool
        self.broker = broker
        self.prefetch = prefetch
        self.graphs = GraphCache()
        self._subscription: Subscription | None = None

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

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            event = CallEvent.from_bytes(delivery.body)
            uuid.UUID(event.call_id)
        except (MessageError, ValueError) as exc:
            log.warning("dead-lettering an unreadable call event: %s", exc)
            await delivery.dead_letter()
            return
        # Held, not requeued, while the database is away: a requeue loop would
        # reach the queue's delivery limit and dead-letter a call's outcome.
        await while_database_away(lambda: self.handle(event), what="call event")
        await delivery.ack()

    async def handle(self, event: CallEvent) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            call = await conn.fetchrow(
                "SELECT * FROM calls WHERE id = $1 FOR UPDATE", uuid.UUID(event.call_id)
            )
            if call is None or call["state"] == "ended":
                return  # unknown, or a duplicate of an end already applied
            if event.kind == "ended":
                await self._ended(conn, call, event)
            elif event.kind == "amd":
                await conn.execute(
                    "UPDATE calls SET amd_verdict = $2 WHERE id = $1",
                    call["id"],
                    event.data.get("verdict"),
                )
                await _progress(conn, call, event, verdict=event.data.get("verdict"))
            elif event.kind in _STAMPS and _ORDER[_STATES[event.kind]] > _ORDER[call["state"]]:
                await conn.execute(
                    f"""UPDATE calls SET state = $2,
                            {_STAMPS[event.kind]} = coalesce({_STAMPS[event.kind]},
                                                             to_timestamp($3))
                        WHERE id = $1""",
                    call["id"],
                    _STATES[event.kind],
                    event.at,
                )
                await _progress(conn, call, event)

    async def _ended(
        self, conn: asyncpg.Connection, call: asyncpg.Record, event: CallEvent
    ) -> None:
        data = event.data
        times = data.get("times", {})
        disposition = data.get("disposition") or "failed"
        await conn.execute(
            """UPDATE calls SET state = 'ended', disposition = $2, sip_status = $3,
                   sip_reason = $4, hangup_by = $5, amd_verdict = coalesce($6, amd_verdict),
                   bot_result = $7, media_stats = $8,
                   dialing_at = coalesce(dialing_at, to_timestamp($9)),
                   ringing_at = coalesce(ringing_at, to_timestamp($10)),
                   answered_at = coalesce(answered_at, to_timestamp($11)),
                   ended_at = to_timestamp($12), ring_s = $13, talk_s = $14,
                   worker_id = coalesce(worker_id, nullif($15, ''))
               WHERE id = $1""",
            call["id"],
            disposition,
            data.get("sip_status"),
            data.get("sip_reason"),
            data.get("hangup_by"),
            data.get("amd_verdict"),
            data.get("bot_result"),
            data.get("media_stats"),
            times.get("dialing"),
            times.get("ringing"),
            times.get("answered"),
            times.get("ended", event.at),
            data.get("ring_s"),
            data.get("talk_s"),
            event.worker_id,
        )
        if call["node_run_id"] is not None:
            await conn.execute(
                """UPDATE node_runs SET status = 'completed', outcome = $2, ended_at = now(),
                       detail = detail || $3 WHERE id = $1""",
                call["node_run_id"],
                disposition,
                {"sip_status": data.get("sip_status"), "hangup_by": data.get("hangup_by")},
            )
        record = await conn.fetchrow(
            f"SELECT {RECORD_COLUMNS} FROM records r WHERE r.id = $1 FOR UPDATE", call["record_id"]
        )
        workflow = await conn.fetchrow(
            "SELECT workflow_key, name FROM workflows WHERE id = $1", call["workflow_id"]
        )
        info = {"workflow_key": workflow["workflow_key"], "name": workflow["name"]}
        ended = await conn.fetchrow("SELECT * FROM calls WHERE id = $1", call["id"])
        recording = data.get("recording")
        if isinstance(recording, dict) and recording.get("path"):
            recording_id = new_id()
            await conn.execute(
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
            await write_event(
                conn,
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
        await write_event(
            conn,
            tenant_id=call["tenant_id"],
            event_type="call.completed",
            record_id=call["record_id"],
            workflow_id=call["workflow_id"],
            payload=call_completed_payload(ended, record, info),
        )
        if record["status"] != "in_progress" or record["last_call_id"] != call["id"]:
            return  # completed by the API or cancelled meanwhile: nothing to advance
        if disposition == "expired":
            # Never dialled (it waited in the queue past its window): not an attempt.
            await conn.execute(
                """UPDATE records SET status = 'queued', next_attempt_at = now(),
                       attempts = greatest(attempts - 1, 0),
                       node_attempts = greatest(node_attempts - 1, 0), updated_at = now()
                   WHERE id = $1""",
                record["id"],
            )
            return
        graph = await self.graphs.get(conn, record["workflow_id"], record["workflow_version"])
        zone = record_zone(record, graph.policy)[0]
        context = context_for(
            record,
            call={"outcome": disposition, "disposition": disposition, **_call_fields(ended)},
            result=_bot_context(data.get("bot_result")),
        )
        step = graph.after_call(
            call["node_id"], disposition, record["node_attempts"], context, event.at, zone
        )
        await apply_step(conn, record, graph, step, event.at, info, may_dial=False)


def _call_fields(call: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sip_status": call["sip_status"],
        "hangup_by": call["hangup_by"],
        "amd_verdict": call["amd_verdict"],
        "talk_s": call["talk_s"],
        "ring_s": call["ring_s"],
    }


def _bot_context(bot: Any) -> dict[str, Any]:
    """The bot's result as branch conditions see it: ``result.<key>``, ``result.tags``."""
    if not isinstance(bot, dict):
        return {}
    values = bot.get("values") if isinstance(bot.get("values"), dict) else {}
    return {**values, "tags": bot.get("tags") or [], "bot_outcome": bot.get("outcome")}
