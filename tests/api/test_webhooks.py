"""Webhook endpoints over the API: secrets shown once, rotation, filters, isolation."""

from __future__ import annotations

import base64
import dataclasses
import uuid

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialer.outbox import write_event
from dialer.settings import Settings
from tests.api.helpers import make_workflow
from tests.conftest import Tenant

HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, webhook_allow_hosts=("127.0.0.0/8",))


async def create(client: TestClient, tenant: Tenant, **body: object) -> dict:
    resp = await client.post(
        "/v1/webhook-endpoints", json={"url": HOOK, **body}, headers=tenant.auth
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_create_shows_the_secret_once(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    wf = await make_workflow(client, tenant.auth)
    created = await create(
        client,
        tenant,
        events=["record.completed", "call.completed", "call.completed"],
        workflow_id=wf["workflow_key"],
        description="CRM",
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert created["events"] == ["call.completed", "record.completed"]
    assert created["workflow_id"] == wf["id"]
    assert created["enabled"] is True
    assert (
        await pool.fetchval(
            "SELECT secret FROM webhook_endpoints WHERE id = $1", uuid.UUID(created["id"])
        )
        == secret
    )
    one = await client.get(f"/v1/webhook-endpoints/{created['id']}", headers=tenant.auth)
    listed = await client.get("/v1/webhook-endpoints", headers=tenant.auth)
    for text in (await one.text(), await listed.text()):
        assert secret not in text and 'secret"' not in text.replace("previous_secret", "")
    assert [e["id"] for e in (await listed.json())["items"]] == [created["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": 5}, "url"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": "http://10.0.0.1/"}, "url"),
        ({"url": "http://2130706433/"}, "url"),
        ({"url": "http://[::ffff:127.0.0.1]/"}, "url"),
        ({"url": "http://example.com@127.0.0.1/"}, "url"),
        ({"url": "http://169.254.169.254/"}, "url"),
        ({"url": HOOK, "events": ["call.started"]}, "events"),
        ({"url": HOOK, "events": "call.completed"}, "events"),
        ({"url": HOOK, "workflow_id": "nope00"}, "workflow_id"),
        ({"url": HOOK, "workflow_id": 7}, "workflow_id"),
        ({"url": HOOK, "description": "x" * 501}, "description"),
        ({"url": HOOK, "secret": "whsec_mine"}, "secret"),
    ],
)
async def test_create_refuses(client: TestClient, tenant: Tenant, body: dict, field: str) -> None:
    resp = await client.post("/v1/webhook-endpoints", json=body, headers=tenant.auth)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == field


async def test_patch_rotate_delete(client: TestClient, tenant: Tenant, pool: asyncpg.Pool) -> None:
    created = await create(client, tenant)
    path = f"/v1/webhook-endpoints/{created['id']}"
    resp = await client.patch(
        path, json={"events": ["list.completed"], "enabled": False}, headers=tenant.auth
    )
    body = await resp.json()
    assert (body["events"], body["enabled"], body["disabled_reason"]) == (
        ["list.completed"],
        False,
        "disabled by the tenant",
    )
    resp = await client.patch(
        path, json={"enabled": True, "url": f"{HOOK}/v2"}, headers=tenant.auth
    )
    body = await resp.json()
    assert (body["enabled"], body["disabled_reason"], body["url"]) == (True, None, f"{HOOK}/v2")
    bad = await client.patch(path, json={"url": "http://10.1.1.1/"}, headers=tenant.auth)
    assert bad.status == 422

    rotated = await client.post(f"{path}/rotate", headers=tenant.auth)
    assert rotated.status == 200, await rotated.text()
    new = (await rotated.json())["secret"]
    assert new.startswith("whsec_") and new != created["secret"]
    assert (await rotated.json())["previous_secret_expires_at"] is not None
    row = await pool.fetchrow(
        """SELECT secret, previous_secret, previous_expires_at - now() AS left
           FROM webhook_endpoints WHERE id = $1""",
        uuid.UUID(created["id"]),
    )
    assert (row["secret"], row["previous_secret"]) == (new, created["secret"])
    assert 23 * 3600 < row["left"].total_seconds() <= 24 * 3600
    short = await client.post(f"{path}/rotate", json={"overlap_s": 60}, headers=tenant.auth)
    assert short.status == 200
    bad = await client.post(f"{path}/rotate", json={"overlap_s": -1}, headers=tenant.auth)
    assert (await bad.json())["error"]["field"] == "overlap_s"

    assert (await client.delete(path, headers=tenant.auth)).status == 204
    assert (await client.get(path, headers=tenant.auth)).status == 404
    assert (await client.delete(path, headers=tenant.auth)).status == 404


async def test_events_attempts_and_notices_listing(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    created = await create(client, tenant)
    async with pool.acquire() as conn:
        event = await write_event(
            conn, tenant_id=tenant.id, event_type="workflow.status_changed", payload={"s": 1}
        )
    listed = await client.get(
        "/v1/webhook-events?type=workflow.status_changed", headers=tenant.auth
    )
    assert [e["id"] for e in (await listed.json())["items"]] == [str(event)]
    one = await client.get(f"/v1/webhook-events/{event}", headers=tenant.auth)
    assert (await one.json())["payload"]["data"] == {"s": 1}
    for path in (
        f"/v1/webhook-events/{event}/attempts",
        f"/v1/webhook-endpoints/{created['id']}/attempts",
        "/v1/notices",
    ):
        resp = await client.get(path, headers=tenant.auth)
        assert resp.status == 200 and (await resp.json())["items"] == [], path
    resp = await client.post(f"/v1/webhook-events/{event}/redeliver", headers=tenant.auth)
    assert resp.status == 202
    assert [d["endpoint_id"] for d in (await resp.json())["deliveries"]] == [created["id"]]
    assert (await client.get("/v1/webhook-events?type=x", headers=tenant.auth)).status == 422
    async with pool.acquire() as conn:
        newer = [
            await write_event(conn, tenant_id=tenant.id, event_type="list.completed", payload={})
            for _ in range(2)
        ]
    first = await (await client.get("/v1/webhook-events?limit=2", headers=tenant.auth)).json()
    rest = await client.get(
        f"/v1/webhook-events?limit=2&cursor={first['next_cursor']}", headers=tenant.auth
    )
    # Newest first by event id (UUIDv7: ordered to the millisecond), no overlap, no gap.
    pages = [e["id"] for e in first["items"]] + [e["id"] for e in (await rest.json())["items"]]
    assert pages == sorted(map(str, [event, *newer]), reverse=True)
    await pool.execute(
        "UPDATE webhook_endpoints SET enabled = false WHERE tenant_id = $1", tenant.id
    )


async def test_tenants_cannot_see_each_others_endpoints(
    client: TestClient, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    theirs = await create(client, other_tenant)
    async with pool.acquire() as conn:
        event = await write_event(
            conn, tenant_id=other_tenant.id, event_type="workflow.status_changed", payload={}
        )
    base = f"/v1/webhook-endpoints/{theirs['id']}"
    for method, path, body in [
        ("get", base, None),
        ("patch", base, {"description": "pwned"}),
        ("delete", base, None),
        ("post", f"{base}/rotate", None),
        ("get", f"{base}/attempts", None),
        ("get", f"/v1/webhook-events/{event}", None),
        ("get", f"/v1/webhook-events/{event}/attempts", None),
        ("post", f"/v1/webhook-events/{event}/redeliver", None),
    ]:
        resp = await getattr(client, method)(path, json=body, headers=tenant.auth)
        assert resp.status == 404, (method, path)
    mine = await create(client, tenant)
    resp = await client.post(
        f"/v1/webhook-events/{event}/redeliver",
        json={"endpoint_id": mine["id"]},
        headers=tenant.auth,
    )
    assert resp.status == 404
    listed = await client.get("/v1/webhook-endpoints", headers=tenant.auth)
    assert [e["id"] for e in (await listed.json())["items"]] == [mine["id"]]
    assert (await client.get("/v1/webhook-events", headers=tenant.auth)).status == 200
    assert (await (await client.get("/v1/webhook-events", headers=tenant.auth)).json())[
        "items"
    ] == []
    row = await pool.fetchrow(
        "SELECT description, enabled FROM webhook_endpoints WHERE id = $1",
        uuid.UUID(theirs["id"]),
    )
    assert (row["description"], row["enabled"]) == ("", True)
    await pool.execute("UPDATE webhook_endpoints SET enabled = false")


async def test_endpoints_need_an_api_key(client: TestClient) -> None:
    for method, path in [("get", "/v1/webhook-endpoints"), ("post", "/v1/webhook-endpoints")]:
        resp = await getattr(client, method)(path)
        assert resp.status == 401
