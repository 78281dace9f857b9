"""Workflows over HTTP: CRUD, validation errors that name node and field, versions, status."""

from __future__ import annotations

import copy

import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import SIMPLE_DEFINITION, make_workflow, ref_record
from tests.conftest import Tenant


async def test_create_get_list_workflow(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth, status="draft", name="Reminders")
    assert len(wf["workflow_key"]) == 6 and wf["workflow_key"].isalnum()
    assert wf["status"] == "draft" and wf["version"] == 1
    by_id = await client.get(f"/v1/workflows/{wf['id']}", headers=tenant.auth)
    by_key = await client.get(f"/v1/workflows/{wf['workflow_key']}", headers=tenant.auth)
    assert (await by_id.json()) == (await by_key.json()) == wf
    listing = await (await client.get("/v1/workflows", headers=tenant.auth)).json()
    assert [w["id"] for w in listing["items"]] == [wf["id"]]


async def test_templates_listed_and_usable(client: TestClient, tenant: Tenant) -> None:
    resp = await client.get("/v1/workflow-templates", headers=tenant.auth)
    items = (await resp.json())["items"]
    ids = {t["id"] for t in items}
    assert {"voicebot-with-retries", "call-then-sms"} <= ids
    created = await client.post(
        "/v1/workflows", json={"template": "call-then-sms"}, headers=tenant.auth
    )
    assert created.status == 201
    body = await created.json()
    assert body["name"] == "Call, then SMS if nobody answered"
    assert any(n["type"] == "sms" for n in body["definition"]["nodes"])


def _broken(mutate) -> dict:
    definition = copy.deepcopy(SIMPLE_DEFINITION)
    mutate(definition)
    return definition


@pytest.mark.parametrize(
    ("definition", "field", "node"),
    [
        (
            _broken(lambda d: d["nodes"][0].update(ring_timeout_s="soon")),
            "definition.nodes[0].ring_timeout_s",
            "call",
        ),
        (
            _broken(
                lambda d: d["nodes"][0].update(handler={"type": "voicebot", "url": "http://x"})
            ),
            "definition.nodes[0].handler.url",
            "call",
        ),
        (
            _broken(lambda d: d["nodes"][0].update(type="teleport")),
            "definition.nodes[0].type",
            "call",
        ),
        (
            _broken(lambda d: d["edges"].append({"from": "call", "on": "busy", "to": "nowhere"})),
            "definition.edges[1].to",
            "call",
        ),
        (
            _broken(lambda d: d["edges"].append({"from": "call", "on": "sunny", "to": "done"})),
            "definition.edges[1].on",
            "call",
        ),
        (
            _broken(lambda d: d["edges"].append({"from": "done", "to": "call"})),
            "definition.edges[1].from",
            "done",
        ),
        (_broken(lambda d: d.update(start="ghost")), "definition.start", None),
        (
            _broken(lambda d: d["nodes"].append({"id": "call", "type": "end"})),
            "definition.nodes[2].id",
            "call",
        ),
        (
            _broken(
                lambda d: d["nodes"].append(
                    {
                        "id": "b",
                        "type": "branch",
                        "condition": {"field": "meta.x", "operator": "near"},
                    }
                )
            ),
            "definition.nodes[2].condition.operator",
            "b",
        ),
        (
            _broken(lambda d: d["nodes"].append({"id": "w", "type": "wait"})),
            "definition.nodes[2]",
            "w",
        ),
        (
            _broken(
                lambda d: d["nodes"].append(
                    {"id": "w", "type": "wait", "until_local_time": "25:00"}
                )
            ),
            "definition.nodes[2].until_local_time",
            "w",
        ),
        ("not an object", "definition", None),
    ],
)
async def test_invalid_definition_names_node_and_field(
    client: TestClient, tenant: Tenant, definition: object, field: str, node: str | None
) -> None:
    resp = await client.post(
        "/v1/workflows", json={"name": "x", "definition": definition}, headers=tenant.auth
    )
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == field
    if node is not None:
        assert error["problems"][0]["node"] == node


async def test_invalid_settings_name_the_field(client: TestClient, tenant: Tenant) -> None:
    resp = await client.post(
        "/v1/workflows",
        json={
            "name": "x",
            "definition": SIMPLE_DEFINITION,
            "settings": {"default_timezone": "Mars/Olympus", "retry": {"busy": {"delay_s": 5}}},
        },
        headers=tenant.auth,
    )
    assert resp.status == 422
    fields = [p["field"] for p in (await resp.json())["error"]["problems"]]
    assert fields == ["settings.default_timezone", "settings.retry.busy.max_attempts"]


async def test_update_makes_versions_and_records_keep_theirs(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    first = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    record_id = (await first.json())["record_id"]
    new_definition = copy.deepcopy(SIMPLE_DEFINITION)
    new_definition["nodes"][0]["ring_timeout_s"] = 45
    resp = await client.patch(
        f"/v1/workflows/{wf['id']}", json={"definition": new_definition}, headers=tenant.auth
    )
    assert resp.status == 200
    updated = await resp.json()
    assert updated["version"] == 2
    assert updated["definition"]["nodes"][0]["ring_timeout_s"] == 45
    renamed = await client.patch(
        f"/v1/workflows/{wf['id']}", json={"name": "Renamed"}, headers=tenant.auth
    )
    assert (await renamed.json())["version"] == 2
    versions = await (
        await client.get(f"/v1/workflows/{wf['id']}/versions", headers=tenant.auth)
    ).json()
    assert [v["version"] for v in versions["items"]] == [2, 1]
    old = await (await client.get(f"/v1/records/{record_id}", headers=tenant.auth)).json()
    assert old["workflow_version"] == 1
    second = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record("3125550123")},
        headers=tenant.auth,
    )
    new = await (
        await client.get(f"/v1/records/{(await second.json())['record_id']}", headers=tenant.auth)
    ).json()
    assert new["workflow_version"] == 2


async def test_status_transitions_and_toggle(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth, status="draft")
    path = f"/v1/workflows/{wf['id']}"
    toggled = await (await client.post(f"{path}/toggle", headers=tenant.auth)).json()
    assert toggled["status"] == "active"
    toggled = await (await client.post(f"{path}/toggle", headers=tenant.auth)).json()
    assert toggled["status"] == "paused"
    back = await client.post(f"{path}/status", json={"status": "draft"}, headers=tenant.auth)
    assert back.status == 409
    await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record()},
        headers=tenant.auth,
    )
    stopped = await client.post(f"{path}/status", json={"status": "stopped"}, headers=tenant.auth)
    assert (await stopped.json())["status"] == "stopped"
    records = await (await client.get("/v1/records", headers=tenant.auth)).json()
    assert [r["status"] for r in records["items"]] == ["cancelled"]
    assert (await client.post(f"{path}/toggle", headers=tenant.auth)).status == 409
    bad = await client.post(f"{path}/status", json={"status": "on"}, headers=tenant.auth)
    assert bad.status == 422


async def test_status_change_writes_outbox_event(client: TestClient, tenant: Tenant, pool) -> None:
    wf = await make_workflow(client, tenant.auth, status="draft")
    await client.post(f"/v1/workflows/{wf['id']}/toggle", headers=tenant.auth)
    await client.post(f"/v1/workflows/{wf['id']}/toggle", headers=tenant.auth)
    rows = await pool.fetch(
        """SELECT payload FROM outbox WHERE tenant_id = $1
           AND event_type = 'workflow.status_changed' ORDER BY id""",
        tenant.id,
    )
    changes = [
        (r["payload"]["data"]["previous_status"], r["payload"]["data"]["status"]) for r in rows
    ]
    assert changes == [("draft", "active"), ("active", "paused")]
    assert rows[0]["payload"]["data"]["workflow_key"] == wf["workflow_key"]


async def test_delete_workflow(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    assert (await client.delete(f"/v1/workflows/{wf['id']}", headers=tenant.auth)).status == 204
    assert (await client.get(f"/v1/workflows/{wf['id']}", headers=tenant.auth)).status == 404


async def test_a_settings_patch_merges_into_the_current_settings(
    client: TestClient, tenant: Tenant
) -> None:
    resp = await client.post(
        "/v1/workflows",
        json={
            "name": "x",
            "definition": SIMPLE_DEFINITION,
            "settings": {"default_timezone": "America/Chicago", "max_attempts": 3},
        },
        headers=tenant.auth,
    )
    wf = await resp.json()
    path = f"/v1/workflows/{wf['id']}"
    patched = await client.patch(path, json={"settings": {"max_attempts": 5}}, headers=tenant.auth)
    assert (await patched.json())["settings"] == {
        "default_timezone": "America/Chicago",
        "max_attempts": 5,
    }
    # RFC 7396: null removes a key.
    removed = await client.patch(
        path, json={"settings": {"max_attempts": None}}, headers=tenant.auth
    )
    assert (await removed.json())["settings"] == {"default_timezone": "America/Chicago"}
    versions = await (await client.get(f"{path}/versions", headers=tenant.auth)).json()
    assert len(versions["items"]) == 3


def test_merge_patch_follows_rfc_7396() -> None:
    from api.workflows import merge_patch

    target = {"window": {"start": "09:00", "end": "17:00"}, "retry": [1], "keep": True}
    patch = {"window": {"end": None, "days": [1]}, "retry": [2, 3], "new": {"x": None}}
    assert merge_patch(target, patch) == {
        "window": {"start": "09:00", "days": [1]},
        "retry": [2, 3],
        "keep": True,
        "new": {},
    }
    assert merge_patch(target, "whole") == "whole"
    assert target["window"] == {"start": "09:00", "end": "17:00"}  # not changed in place
