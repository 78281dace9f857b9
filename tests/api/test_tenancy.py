"""Tenant A can neither read, list, change nor delete anything of tenant B's: 404, never 403."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.api.helpers import SIMPLE_DEFINITION, make_workflow, ref_record
from tests.conftest import Tenant


async def test_tenants_are_isolated(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    a, b = tenant, other_tenant
    wf_b = await make_workflow(client, b.auth)
    created = await client.post(
        f"/v1/workflows/{wf_b['id']}/lists",
        json={"name": "B's list", "records": [ref_record(case_id="B-CASE")]},
        headers=b.auth,
    )
    assert created.status == 201, await created.text()
    body_b = await created.json()
    list_b = body_b["list"]["id"]
    record_b = body_b["records"][0]["id"]

    # Read
    for path in (
        f"/v1/workflows/{wf_b['id']}",
        f"/v1/workflows/{wf_b['workflow_key']}",
        f"/v1/workflows/{wf_b['id']}/versions",
        f"/v1/workflows/{wf_b['id']}/lists",
        f"/v1/lists/{list_b}",
        f"/v1/records/{record_b}",
    ):
        resp = await client.get(path, headers=a.auth)
        assert resp.status == 404, path
    # List and search
    assert (await (await client.get("/v1/workflows", headers=a.auth)).json())["items"] == []
    for query in ("", "?case_id=B-CASE", "?phone=2125550123", f"?workflow_id={wf_b['id']}"):
        resp = await client.get(f"/v1/records{query}", headers=a.auth)
        assert (await resp.json())["items"] == [], query
    located = await client.get("/v1/records/locate?case_id=B-CASE", headers=a.auth)
    assert (await located.json())["items"] == []
    # Change
    changes = [
        ("patch", f"/v1/workflows/{wf_b['id']}", {"name": "pwned"}),
        ("post", f"/v1/workflows/{wf_b['id']}/status", {"status": "stopped"}),
        ("post", f"/v1/workflows/{wf_b['id']}/toggle", None),
        ("post", f"/v1/workflows/{wf_b['id']}/lists", {"name": "x", "records": [ref_record()]}),
        ("patch", f"/v1/lists/{list_b}", {"name": "pwned"}),
        ("post", f"/v1/lists/{list_b}/cancel", None),
        ("patch", f"/v1/records/{record_b}", {"record_first_name": "pwned"}),
        ("post", "/v1/records", {"workflow_key": wf_b["workflow_key"], **ref_record()}),
    ]
    for method, path, payload in changes:
        resp = await getattr(client, method)(path, json=payload, headers=a.auth)
        assert resp.status == 404, (method, path, await resp.text())
    # The reference API with A's key and B's workflow key
    resp = await client.post(
        "/api/call/", json={"api_key": a.key, "workflow_key": wf_b["workflow_key"], **ref_record()}
    )
    assert resp.status == 404
    resp = await client.post(
        "/api/complete/",
        json={
            "api_key": a.key,
            "workflow_key": wf_b["workflow_key"],
            "record_phone_number": "2125550123",
        },
    )
    assert resp.status == 404
    # Delete
    for path in (f"/v1/records/{record_b}", f"/v1/workflows/{wf_b['id']}"):
        assert (await client.delete(path, headers=a.auth)).status == 404, path

    # B still has it all, unchanged.
    wf_again = await (await client.get(f"/v1/workflows/{wf_b['id']}", headers=b.auth)).json()
    assert wf_again["name"] == wf_b["name"] and wf_again["status"] == "active"
    rec = await (await client.get(f"/v1/records/{record_b}", headers=b.auth)).json()
    assert rec["record_first_name"] == "Anna" and rec["status"] == "queued"
    lst = await (await client.get(f"/v1/lists/{list_b}", headers=b.auth)).json()
    assert lst["name"] == "B's list" and lst["status"] == "active"
    listing = await (await client.get("/v1/records", headers=b.auth)).json()
    assert len(listing["items"]) == 1


async def test_missing_or_malformed_bearer(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}):
        resp = await client.get("/v1/workflows", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["field"] == "Authorization"
    resp = await client.post("/v1/workflows", json={"name": "x", "definition": SIMPLE_DEFINITION})
    assert resp.status == 401
