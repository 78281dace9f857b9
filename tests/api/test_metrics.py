"""Prometheus metrics read from the database: real calls show up, by state and outcome."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dialer.ids import new_id
from tests.api.helpers import make_workflow, ref_record
from tests.conftest import Tenant


async def test_metrics_reflect_calls(client: TestClient, tenant: Tenant, pool) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    record_id = (await resp.json())["record_id"]
    calls_made = (("ringing", None, None), ("queued", None, None), ("answered", None, None),
                  ("ended", "busy", None), ("ended", "busy", None),
                  ("ended", "no_answer", "pacing"))  # fmt: skip
    for state, disposition, end_reason in calls_made:
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state,
                   disposition, dialing_at, ended_at, end_reason)
               VALUES ($1, $2, $3::uuid, $4::uuid, '+12125550123', $5, $6, now(),
                       CASE WHEN $5 = 'ended' THEN now() END, $7)""",
            new_id(),
            tenant.id,
            record_id,
            wf["id"],
            state,
            disposition,
            end_reason,
        )
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls = {
        (s.labels["state"], s.labels["disposition"]): s.value
        for s in families["dialer_calls"].samples
        if s.labels["workflow_id"] == wf["id"]
    }
    assert calls == {("ringing", ""): 1, ("queued", ""): 1, ("answered", ""): 1,
                     ("ended", "busy"): 2, ("ended", "no_answer"): 1}  # fmt: skip
    queue = {s.labels["workflow_id"]: s.value for s in families["dialer_dial_queue_depth"].samples}
    assert queue[wf["id"]] == 1
    # One ringing (the queued call is not dialling yet) for the 9 seats not talking (the
    # workflow names no seats: 10).
    ratio = {s.labels["workflow_id"]: s.value for s in families["dialer_pacing_ratio"].samples}
    assert ratio[wf["id"]] == 1 / 9
    flying = {s.labels["workflow_id"]: s.value for s in families["dialer_calls_in_flight"].samples}
    free = {s.labels["workflow_id"]: s.value for s in families["dialer_seats_free"].samples}
    assert (flying[wf["id"]], free[wf["id"]]) == (1, 9)
    assert families["dialer_active_calls"].samples[0].value >= 1
    assert families["dialer_attempts_per_second"].samples[0].value >= 3 / 60
    due = {s.labels["workflow_id"]: s.value for s in families["dialer_due_records"].samples}
    assert due.get(wf["id"]) == 1
    assert "dialer_webhook_lag_seconds" in families
    # One of the three calls ended in the last hour was taken back while ringing.
    taken = families["dialer_pacing_taken_back_ratio"].samples
    assert {s.labels["workflow_id"]: s.value for s in taken}[wf["id"]] == 1 / 3


async def test_abandonment_leaves_machines_out_and_idle_workflows_read_zero(
    client: TestClient, tenant: Tenant, pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    idle = await make_workflow(client, tenant.auth, status="paused", name="idle")
    resp = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    record_id = (await resp.json())["record_id"]
    for disposition in ("human", "abandoned", "machine", "machine"):
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164, state,
                   disposition, dialing_at, answered_at, ended_at)
               VALUES ($1, $2, $3::uuid, $4::uuid, '+12125550123', 'ended', $5,
                       now(), now(), now())""",
            new_id(),
            tenant.id,
            record_id,
            wf["id"],
            disposition,
        )
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    abandoned = {
        s.labels["workflow_id"]: s.value for s in families["dialer_abandonment_ratio"].samples
    }
    assert abandoned[wf["id"]] == 1 / 2  # of the two live answers; machines are not people
    status = {
        s.labels["workflow_id"]: s.labels["status"]
        for s in families["dialer_workflow_status"].samples
    }
    assert (status[wf["id"]], status[idle["id"]]) == ("active", "paused")
    for name in ("dialer_due_records", "dialer_dial_queue_depth", "dialer_calls_in_flight"):
        values = {s.labels["workflow_id"]: s.value for s in families[name].samples}
        assert values[idle["id"]] == 0, name
    assert "dialer_rtp_jitter_seconds" in families


async def test_a_draft_workflow_s_records_are_not_due(
    client: TestClient, tenant: Tenant, pool
) -> None:
    draft = await make_workflow(client, tenant.auth, status="draft", name="draft")
    resp = await client.post(
        "/v1/records",
        json={"workflow_key": draft["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    assert resp.status == 201
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("dialer_due_records", "dialer_workflow_status"):
        assert draft["id"] not in {s.labels["workflow_id"] for s in families[name].samples}


async def test_counters_count_every_dial_and_end_once_and_only_go_up(
    client: TestClient, tenant: Tenant, pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    record_id = (await resp.json())["record_id"]
    calls = [new_id() for _ in range(4)]
    for call_id in calls:
        await pool.execute(
            """INSERT INTO calls (id, tenant_id, record_id, workflow_id, phone_e164)
               VALUES ($1, $2, $3::uuid, $4::uuid, '+12125550123')""",
            call_id,
            tenant.id,
            record_id,
            wf["id"],
        )

    async def counters() -> tuple[dict, dict]:
        text = await (await client.get("/metrics")).text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        dialled = {
            s.labels["workflow_id"]: s.value
            for s in families["dialer_calls_dialled"].samples
            if s.name.endswith("_total")
        }
        ended = {
            s.labels["disposition"]: s.value
            for s in families["dialer_calls_ended"].samples
            if s.name.endswith("_total") and s.labels["workflow_id"] == wf["id"]
        }
        return dialled, ended

    # Three claimed in one statement, as a worker claims a batch.
    await pool.execute(
        "UPDATE calls SET state = 'dialing', dialing_at = now() WHERE id = ANY($1::uuid[])",
        calls[:3],
    )
    # Updates that change neither count nothing.
    await pool.execute("UPDATE calls SET published_at = now() WHERE id = ANY($1::uuid[])", calls)
    await pool.execute("UPDATE calls SET state = 'ringing' WHERE id = $1", calls[0])
    assert (await counters())[0][wf["id"]] == 3
    await pool.execute(
        """UPDATE calls SET state = 'ended', disposition = d, ended_at = now()
           FROM unnest($1::uuid[], $2::text[]) AS u(id, d) WHERE calls.id = u.id""",
        calls,
        ["busy", "busy", "answered", "cancelled"],
    )
    # Ending again (a redelivered event) does not count twice.
    await pool.execute("UPDATE calls SET disposition = 'busy' WHERE id = $1", calls[0])
    dialled, ended = await counters()
    assert dialled[wf["id"]] == 3
    assert ended == {"busy": 2, "answered": 1, "cancelled": 1}
    text = await (await client.get("/metrics")).text()
    assert "# TYPE dialer_calls_ended_total counter" in text
