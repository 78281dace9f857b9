"""Trunks through the API: create, read (no password), change, delete; per tenant."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import SIMPLE_DEFINITION, make_workflow
from tests.conftest import Tenant


async def test_trunk_crud(client: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    resp = await client.post(
        "/v1/trunks",
        json={
            "name": "main",
            "uri": "sip:trunk.example.com;transport=tcp",
            "username": "acme",
            "password": "s3cret",
            "cps": 10,
            "max_channels": 30,
        },
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    trunk = await resp.json()
    assert trunk["has_password"] is True and "password" not in trunk
    assert "s3cret" not in await resp.text()
    dup = await client.post(
        "/v1/trunks", json={"name": "main", "uri": "sip:x.example.com"}, headers=tenant.auth
    )
    assert dup.status == 409
    path = f"/v1/trunks/{trunk['id']}"
    assert (await client.get(path, headers=other_tenant.auth)).status == 404
    changed = await client.patch(path, json={"cps": 2.5}, headers=tenant.auth)
    assert (await changed.json())["cps"] == 2.5
    listing = await (await client.get("/v1/trunks", headers=tenant.auth)).json()
    assert [t["name"] for t in listing["items"]] == ["main"]
    assert (await client.delete(path, headers=tenant.auth)).status == 204
    assert (await client.get(path, headers=tenant.auth)).status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "main"}, "uri"),
        ({"name": "bad name", "uri": "sip:a.example.com"}, "name"),
        ({"name": "x", "uri": "http://a.example.com"}, "uri"),
        ({"name": "x", "uri": "sip:a.example.com", "cps": 0}, "cps"),
        ({"name": "x", "uri": "sip:a.example.com", "password": "p"}, "username"),
        ({"name": "x", "uri": "sip:a.example.com", "colour": "red"}, "colour"),
    ],
)
async def test_bad_trunks_name_the_field(
    client: TestClient, tenant: Tenant, body: dict, field: str
) -> None:
    resp = await client.post("/v1/trunks", json=body, headers=tenant.auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == field


async def test_a_workflow_names_an_existing_trunk_which_then_stays(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    path = f"/v1/workflows/{wf['id']}"
    missing = await client.patch(path, json={"settings": {"trunk": "main"}}, headers=tenant.auth)
    assert missing.status == 422
    assert (await missing.json())["error"]["field"] == "settings.trunk"
    # Another tenant's trunk of that name is not this tenant's.
    theirs = {"name": "main", "uri": "sip:theirs.example.com"}
    await client.post("/v1/trunks", json=theirs, headers=other_tenant.auth)
    assert (
        await client.patch(path, json={"settings": {"trunk": "main"}}, headers=tenant.auth)
    ).status == 422
    made = await client.post(
        "/v1/trunks", json={"name": "main", "uri": "sip:a.example.com"}, headers=tenant.auth
    )
    trunk = f"/v1/trunks/{(await made.json())['id']}"
    used = await client.patch(path, json={"settings": {"trunk": "main"}}, headers=tenant.auth)
    assert used.status == 200
    # While the workflow dials through it, the trunk is neither deleted nor renamed.
    refused = await client.delete(trunk, headers=tenant.auth)
    assert (
        refused.status == 409 and wf["workflow_key"] in (await refused.json())["error"]["message"]
    )
    assert (await client.patch(trunk, json={"name": "other"}, headers=tenant.auth)).status == 409
    assert (await client.patch(trunk, json={"cps": 5}, headers=tenant.auth)).status == 200
    await client.post(f"{path}/status", json={"status": "stopped"}, headers=tenant.auth)
    assert (await client.delete(trunk, headers=tenant.auth)).status == 204
    created = await client.post(
        "/v1/workflows",
        json={"name": "x", "definition": SIMPLE_DEFINITION, "settings": {"trunk": "main"}},
        headers=tenant.auth,
    )
    assert created.status == 422
