"""Where a demo run stands: one snapshot of the tenant's records, calls and webhooks.

``take_snapshot`` reads the database; everything derived from a snapshot
(rates, whether the run is over) is pure and tested on its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FINAL_STATUSES", "Snapshot", "take_snapshot"]

FINAL_STATUSES = frozenset({"completed", "cancelled", "dnc", "failed"})


@dataclass(frozen=True)
class Snapshot:
    elapsed_s: float
    records: int
    record_status: Counter[str] = field(default_factory=Counter)
    record_outcomes: Counter[str] = field(default_factory=Counter)  # of final records
    call_states: Counter[str] = field(default_factory=Counter)  # of calls not ended
    dispositions: Counter[str] = field(default_factory=Counter)  # of ended calls
    amd_verdicts: Counter[str] = field(default_factory=Counter)
    bot_answers: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)  # webhook deliveries by status
    answered: int = 0  # ended calls that were answered (by a person or a machine)
    recordings: int = 0
    recorded_s: float = 0.0
    webhooks_received: int = 0
    bad_signatures: int = 0
    sms_received: int = 0
    seats: int = 0

    @property
    def final(self) -> int:
        return sum(n for status, n in self.record_status.items() if status in FINAL_STATUSES)

    @property
    def in_flight(self) -> int:
        return sum(self.call_states.values())

    @property
    def calls_ended(self) -> int:
        return sum(self.dispositions.values())

    @property
    def answer_rate(self) -> float | None:
        ended = self.calls_ended
        return self.answered / ended if ended else None

    @property
    def abandon_rate(self) -> float | None:
        """Abandoned calls over answered ones, as the pacing rule counts them."""
        return self.dispositions["abandoned"] / self.answered if self.answered else None

    @property
    def pacing_ratio(self) -> float | None:
        """Calls being dialled or rung per seat not talking: above 1 is predictive dialling."""
        talking = self.call_states["answered"]
        free = self.seats - talking
        dialling = self.call_states["queued"] + self.call_states["dialing"]
        dialling += self.call_states["ringing"]
        return dialling / free if free > 0 else None

    @property
    def webhooks_pending(self) -> int:
        return self.deliveries["pending"]

    @property
    def webhooks_delivered(self) -> int:
        return self.deliveries["succeeded"]

    @property
    def done(self) -> bool:
        """Every record final, no call open, and every webhook delivered (or given up)."""
        return (
            self.records > 0
            and self.final == self.records
            and self.in_flight == 0
            and self.webhooks_pending == 0
        )


async def take_snapshot(
    pool: Any, tenant_id: Any, *, elapsed_s: float, seats: int, sinks: Any = None
) -> Snapshot:
    async with pool.acquire() as conn:
        records = await conn.fetch(
            """SELECT status, outcome, count(*) AS n FROM records
               WHERE tenant_id = $1 GROUP BY status, outcome""",
            tenant_id,
        )
        calls = await conn.fetch(
            """SELECT state, disposition, amd_verdict, bot_result->'values'->>'answer' AS answer,
                      answered_at IS NOT NULL AS answered, count(*) AS n
               FROM calls WHERE tenant_id = $1 GROUP BY 1, 2, 3, 4, 5""",
            tenant_id,
        )
        deliveries = await conn.fetch(
            """SELECT status, count(*) AS n FROM webhook_deliveries
               WHERE tenant_id = $1 GROUP BY status""",
            tenant_id,
        )
        recordings = await conn.fetchrow(
            """SELECT count(*) AS n, coalesce(sum(duration_s), 0) AS s FROM recordings
               WHERE tenant_id = $1 AND deleted_at IS NULL""",
            tenant_id,
        )
    status: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for row in records:
        status[row["status"]] += row["n"]
        if row["status"] in FINAL_STATUSES:
            outcomes[row["outcome"] or row["status"]] += row["n"]
    states: Counter[str] = Counter()
    dispositions: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    answered = 0
    for row in calls:
        if row["state"] == "ended":
            dispositions[row["disposition"] or "unknown"] += row["n"]
            answered += row["n"] if row["answered"] else 0
        else:
            states[row["state"]] += row["n"]
        if row["amd_verdict"]:
            verdicts[row["amd_verdict"]] += row["n"]
        if row["answer"]:
            answers[row["answer"]] += row["n"]
    return Snapshot(
        elapsed_s=elapsed_s,
        records=sum(status.values()),
        record_status=status,
        record_outcomes=outcomes,
        call_states=states,
        dispositions=dispositions,
        amd_verdicts=verdicts,
        bot_answers=answers,
        answered=answered,
        deliveries=Counter({row["status"]: row["n"] for row in deliveries}),
        recordings=recordings["n"],
        recorded_s=float(recordings["s"]),
        webhooks_received=len(sinks.events) if sinks is not None else 0,
        bad_signatures=sinks.bad_signatures if sinks is not None else 0,
        sms_received=len(sinks.sms) if sinks is not None else 0,
        seats=seats,
    )
