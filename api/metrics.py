"""Prometheus metrics at ``/metrics``, read from PostgreSQL at scrape time.

The state that matters lives in the database, shared by every process, so a
scrape of any API process tells the whole story: calls by state and outcome,
attempts in the last minute, active calls, webhook backlog and lag, due
records, the dial queue's depth and the pacing ratio (dials per free seat)
per workflow, each workflow's abandonment rate over 30 days, and counters of
calls dialled and ended by outcome (kept by triggers in the database, so they
survive restarts and count every process's calls once).
Per-process RTP statistics travel on each call's ``media_stats`` and are
summarised here from the last hour's calls.
"""

from __future__ import annotations

import hmac
import math

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from api.context import POOL, SETTINGS
from api.errors import ApiError
from scheduler.policy import DEFAULT_SEATS

__all__ = ["routes"]

routes = web.RouteTableDef()


class _Snapshot:
    """A collector over values fetched before the scrape is rendered."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self):
        yield from self.families


def _check_token(request: web.Request) -> None:
    """With DIALER_METRICS_TOKEN set, the scrape must bring it as a bearer token."""
    settings = request.app.get(SETTINGS)
    expected = settings.metrics_token.value if settings is not None else ""
    if not expected:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise ApiError(401, "metrics need the bearer token DIALER_METRICS_TOKEN names")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    _check_token(request)
    pool = request.app[POOL]
    # One snapshot for the whole scrape, so that its figures agree with each other.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        calls = await conn.fetch(
            """SELECT workflow_id::text, state, coalesce(disposition, '') AS disposition,
                      count(*) AS n
               FROM calls WHERE state <> 'ended' OR ended_at > now() - interval '1 day'
               GROUP BY 1, 2, 3"""
        )
        attempts = await conn.fetchval(
            "SELECT count(*) FROM calls WHERE dialing_at > now() - interval '1 minute'"
        )
        # Workflows that may still dial: their per-workflow series are written even
        # when zero, so that an idle workflow reads 0 rather than a gap.
        workflows = await conn.fetch(
            """SELECT w.id::text AS workflow_id, w.status,
                      coalesce((v.settings->'pacing'->>'seats')::int, $1) AS seats
               FROM workflows w
               JOIN workflow_versions v
                 ON v.workflow_id = w.id AND v.version = w.current_version
               WHERE w.deleted_at IS NULL AND w.status IN ('active', 'paused')""",
            DEFAULT_SEATS,
        )
        due = await conn.fetch(
            """SELECT workflow_id::text, count(*) AS n FROM records
               WHERE status IN ('queued', 'waiting') AND next_attempt_at <= now()
               GROUP BY 1"""
        )
        # As the pacer counts it (the FCC's rule): a machine is not a live answer.
        abandonment = await conn.fetch(
            """SELECT workflow_id::text,
                      count(*) FILTER (WHERE answered_at IS NOT NULL
                                       AND disposition IS DISTINCT FROM 'machine') AS live,
                      count(*) FILTER (WHERE disposition = 'abandoned') AS abandoned
               FROM calls WHERE state = 'ended' AND ended_at > now() - interval '30 days'
               GROUP BY 1"""
        )
        pacing = await conn.fetch(
            """SELECT workflow_id::text,
                      count(*) FILTER (WHERE state = 'queued') AS queued,
                      count(*) FILTER (WHERE state IN ('dialing', 'ringing')) AS dialling,
                      count(*) FILTER (WHERE state = 'answered') AS answered
               FROM calls WHERE state <> 'ended'
               GROUP BY 1"""
        )
        taken_back = await conn.fetch(
            """SELECT workflow_id::text, count(*) AS ended,
                      count(*) FILTER (WHERE end_reason = 'pacing') AS taken_back
               FROM calls WHERE state = 'ended' AND ended_at > now() - interval '1 hour'
               GROUP BY 1"""
        )
        counters = await conn.fetch(
            """SELECT workflow_id::text, kind, disposition, n FROM call_counters
               ORDER BY 1, 2, 3"""
        )
        media = await conn.fetchrow(
            """SELECT coalesce(avg((media_stats->>'loss_fraction')::float8), 0) AS loss,
                      coalesce(avg((media_stats->>'jitter_ms')::float8), 0) AS jitter
               FROM calls WHERE state = 'ended' AND media_stats IS NOT NULL
                 AND ended_at > now() - interval '1 hour'"""
        )
        webhooks = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                      coalesce(extract(epoch FROM now() - min(created_at)
                          FILTER (WHERE status = 'pending')), 0) AS oldest_s,
                      coalesce(percentile_cont(0.5) WITHIN GROUP (
                          ORDER BY extract(epoch FROM completed_at - created_at))
                          FILTER (WHERE status = 'succeeded'
                                  AND completed_at > now() - interval '1 hour'), 0) AS lag_s
               FROM webhook_deliveries"""
        )
    by_state = GaugeMetricFamily(
        "dialer_calls",
        "Calls by workflow, state and outcome (open, or ended in the last day)",
        labels=["workflow_id", "state", "disposition"],
    )
    active = GaugeMetricFamily("dialer_active_calls", "Calls dialling, ringing or answered")
    active_count = 0
    for row in calls:
        by_state.add_metric([row["workflow_id"], row["state"], row["disposition"]], row["n"])
        if row["state"] in ("dialing", "ringing", "answered"):
            active_count += row["n"]
    active.add_metric([], active_count)
    rate = GaugeMetricFamily("dialer_attempts_per_second", "Call attempts over the last minute")
    rate.add_metric([], attempts / 60.0)
    status = GaugeMetricFamily(
        "dialer_workflow_status",
        "1 for each workflow that may dial, labelled with its status (active or paused)",
        labels=["workflow_id", "status"],
    )
    for row in workflows:
        status.add_metric([row["workflow_id"], row["status"]], 1)
    due_by_workflow = {row["workflow_id"]: row["n"] for row in due}
    depth = GaugeMetricFamily(
        "dialer_due_records",
        "Records due for their next step, by workflow (a paused workflow's wait for its resume)",
        labels=["workflow_id"],
    )
    # Only workflows that may dial: a draft's records are not due for anything yet.
    for workflow_id in sorted(w["workflow_id"] for w in workflows):
        depth.add_metric([workflow_id], due_by_workflow.get(workflow_id, 0))
    queue = GaugeMetricFamily(
        "dialer_dial_queue_depth",
        "Dial jobs published and not yet taken by a worker, by workflow",
        labels=["workflow_id"],
    )
    in_flight = GaugeMetricFamily(
        "dialer_calls_in_flight",
        "Calls dialling or ringing, by workflow",
        labels=["workflow_id"],
    )
    free_seats = GaugeMetricFamily(
        "dialer_seats_free",
        "Seats less calls answered (talking, or still in AMD), by workflow",
        labels=["workflow_id"],
    )
    ratio = GaugeMetricFamily(
        "dialer_pacing_ratio",
        "Calls dialling or ringing per free seat, by workflow (above 1: predictive;"
        " NaN while no seat is free)",
        labels=["workflow_id"],
    )
    open_calls = {row["workflow_id"]: row for row in pacing}
    for workflow in workflows:
        workflow_id = workflow["workflow_id"]
        row = open_calls.get(workflow_id)
        queued, dialling, answered = (
            (row["queued"], row["dialling"], row["answered"]) if row else (0, 0, 0)
        )
        free = max(0, workflow["seats"] - answered)
        queue.add_metric([workflow_id], queued)
        in_flight.add_metric([workflow_id], dialling)
        free_seats.add_metric([workflow_id], free)
        ratio.add_metric([workflow_id], dialling / free if free else math.nan)
    abandon = GaugeMetricFamily(
        "dialer_abandonment_ratio",
        "Abandoned / live answers (machines not counted) over 30 days, by workflow",
        labels=["workflow_id"],
    )
    for row in abandonment:
        abandon.add_metric(
            [row["workflow_id"]], row["abandoned"] / row["live"] if row["live"] else 0.0
        )
    take_back = GaugeMetricFamily(
        "dialer_pacing_taken_back_ratio",
        "Calls the predictive pacer hung up while ringing / calls ended, last hour, by workflow",
        labels=["workflow_id"],
    )
    for row in taken_back:
        take_back.add_metric([row["workflow_id"]], row["taken_back"] / row["ended"])
    dialled = CounterMetricFamily(
        "dialer_calls_dialled",
        "Calls handed to a trunk since the workflow began, by workflow",
        labels=["workflow_id"],
    )
    ended = CounterMetricFamily(
        "dialer_calls_ended",
        "Calls ended since the workflow began, by workflow and outcome",
        labels=["workflow_id", "disposition"],
    )
    for row in counters:
        if row["kind"] == "dialled":
            dialled.add_metric([row["workflow_id"]], row["n"])
        else:
            ended.add_metric([row["workflow_id"], row["disposition"]], row["n"])
    loss = GaugeMetricFamily("dialer_rtp_loss_fraction", "Mean RTP loss of last hour's calls")
    loss.add_metric([], float(media["loss"]))
    jitter = GaugeMetricFamily("dialer_rtp_jitter_seconds", "Mean RTP jitter of last hour's calls")
    jitter.add_metric([], float(media["jitter"]) / 1000.0)
    pending = GaugeMetricFamily("dialer_webhooks_pending", "Webhook deliveries not yet done")
    pending.add_metric([], webhooks["pending"])
    oldest = GaugeMetricFamily(
        "dialer_webhook_backlog_age_seconds", "Age of the oldest pending one"
    )
    oldest.add_metric([], float(webhooks["oldest_s"]))
    lag = GaugeMetricFamily("dialer_webhook_lag_seconds", "Median event-to-delivery, last hour")
    lag.add_metric([], float(webhooks["lag_s"]))
    registry = CollectorRegistry()
    registry.register(
        _Snapshot(
            [
                by_state,
                active,
                rate,
                status,
                depth,
                queue,
                in_flight,
                free_seats,
                ratio,
                abandon,
                take_back,
                dialled,
                ended,
                loss,
                jitter,
                pending,
                oldest,
                lag,
            ]
        )
    )
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
