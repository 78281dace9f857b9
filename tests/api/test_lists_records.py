"""Lists (add, rename, cancel) and record look-ups (search, edit, delete, locate)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.api.helpers import make_workflow, ref_record
from tests.conftest import Tenant


async def test_list_lifecycle(client: TestClient, tenant: Tenant, pool) -> None:
    wf = await make_workflow(client, tenant.auth)
    records = [ref_record(f"212555{i:04d}") for i in range(4)] + [ref_record("12")]
    resp = await client.post(
        f"/v1/workflows/{wf['workflow_key']}/lists",
        json={"name": "November", "settings": {"priority": 5}, "records": records},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    list_id = body["list"]["id"]
    assert body["accepted"] == 4 and body["rejected"] == 1
    assert body["list"]["counts"] == {"queued": 4}
    # One record is being dialled when the list is cancelled: it finishes.
    dialling = body["records"][0]["id"]
    await pool.execute("UPDATE records SET status = 'in_progress' WHERE id = $1::uuid", dialling)

    renamed = await client.patch(
        f"/v1/lists/{list_id}",
        json={"name": "November (2)", "settings": {"priority": 9}},
        headers=tenant.auth,
    )
    assert (await renamed.json())["name"] == "November (2)"
    bad = await client.patch(
        f"/v1/lists/{list_id}", json={"settings": {"priority": 101}}, headers=tenant.auth
    )
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "settings.priority"

    cancelled = await client.post(f"/v1/lists/{list_id}/cancel", headers=tenant.auth)
    body = await cancelled.json()
    assert body["status"] == "cancelled"
    assert body["counts"] == {"cancelled": 3, "in_progress": 1}
    lists = await (await client.get(f"/v1/workflows/{wf['id']}/lists", headers=tenant.auth)).json()
    assert [x["id"] for x in lists["items"]] == [list_id]


async def test_search_edit_delete_locate(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    wf2 = await make_workflow(client, tenant.auth, name="second")
    for workflow, phone, first, case in (
        (wf, "2125550001", "Anna", "C1"),
        (wf, "2125550002", "Bob", "C2"),
        (wf2, "2125550001", "Anna", "C1"),
    ):
        resp = await client.post(
            "/v1/records",
            json={
                "workflow_key": workflow["workflow_key"],
                **ref_record(phone, record_first_name=first),
                "case_id": case,
            },
            headers=tenant.auth,
        )
        assert resp.status == 201
    by_phone = await (await client.get("/v1/records?phone=2125550001", headers=tenant.auth)).json()
    assert len(by_phone["items"]) == 2
    by_e164 = await (
        await client.get("/v1/records?phone=%2B12125550001", headers=tenant.auth)
    ).json()
    assert len(by_e164["items"]) == 2
    by_name = await (await client.get("/v1/records?first_name=bob", headers=tenant.auth)).json()
    assert [r["case_id"] for r in by_name["items"]] == ["C2"]
    page1 = await (await client.get("/v1/records?limit=2", headers=tenant.auth)).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = await (
        await client.get(f"/v1/records?limit=2&cursor={page1['next_cursor']}", headers=tenant.auth)
    ).json()
    assert len(page2["items"]) == 1 and page2["next_cursor"] is None
    assert (await client.get("/v1/records?phone=12", headers=tenant.auth)).status == 422

    located = await (await client.get("/v1/records/locate?case_id=C1", headers=tenant.auth)).json()
    assert {x["workflow_id"] for x in located["items"]} == {wf["id"], wf2["id"]}

    record = by_name["items"][0]
    edited = await client.patch(
        f"/v1/records/{record['id']}",
        json={"record_last_name": "Builder", "meta": {"tier": "gold"}},
        headers=tenant.auth,
    )
    assert edited.status == 200
    body = await edited.json()
    assert body["record_last_name"] == "Builder" and body["meta"] == {"tier": "gold"}
    refused = await client.patch(
        f"/v1/records/{record['id']}",
        json={"record_phone_number": "2125550009"},
        headers=tenant.auth,
    )
    assert refused.status == 422
    assert (await refused.json())["error"]["field"] == "record_phone_number"

    assert (await client.delete(f"/v1/records/{record['id']}", headers=tenant.auth)).status == 204
    assert (await client.get(f"/v1/records/{record['id']}", headers=tenant.auth)).status == 404
    assert (await client.get("/v1/records/not-a-uuid", headers=tenant.auth)).status == 404


async def test_unknown_route_and_method_answer_json(client: TestClient) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["status"] == "error"
    resp = await client.put("/api/call/")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
