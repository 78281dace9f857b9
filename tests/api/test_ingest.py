"""Record ingestion over the reference API and /v1, against the real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import make_workflow, ref_record
from tests.conftest import Tenant


async def _get_record(client: TestClient, tenant: Tenant, record_id: str) -> dict:
    resp = await client.get(f"/v1/records/{record_id}", headers=tenant.auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_single_call_stores_record_with_placeholders_and_meta_as_given(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    meta = {"z": 1, "a": [1, 2.5, None, {"nested": True}], "big": 123456789012345678901234567890}
    placeholders = {"appointment": "Tuesday 3pm", "doctor": {"name": "Dr. Who"}}
    resp = await client.post(
        "/api/call/",
        json={
            "api_key": tenant.key,
            "workflow_key": wf["workflow_key"],
            "record_phone_number": "2125550123",
            "record_first_name": "Anna",
            "record_last_name": "Smith",
            "record_zip_code": "10001",
            "placeholders": placeholders,
            "meta": meta,
        },
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "success"
    record = await _get_record(client, tenant, body["record_id"])
    assert record["phone_e164"] == "+12125550123"
    assert record["record_phone_number"] == "2125550123"
    assert record["record_first_name"] == "Anna"
    assert record["record_zip_code"] == "10001"
    assert record["placeholders"] == placeholders
    assert record["meta"] == meta
    assert list(record["meta"]) == ["z", "a", "big"]  # key order kept
    assert record["status"] == "queued"
    assert record["workflow_version"] == 1


@pytest.mark.parametrize(
    ("patch", "status", "field"),
    [
        ({"record_phone_number": "212555012"}, 422, "record_phone_number"),  # 9 digits
        ({"record_phone_number": "21255501234"}, 422, "record_phone_number"),  # 11 digits
        ({"record_phone_number": "+12125550123"}, 422, "record_phone_number"),  # +1 not allowed
        ({"record_phone_number": "212555O123"}, 422, "record_phone_number"),  # letter O
        ({"record_phone_number": 2125550123}, 422, "record_phone_number"),  # a number
        ({"record_phone_number": "1125550123"}, 422, "record_phone_number"),  # bad area code
        ({"record_first_name": None}, 422, "record_first_name"),
        ({"record_first_name": ""}, 422, "record_first_name"),
        ({"record_first_name": 7}, 422, "record_first_name"),
        ({"record_zip_code": "1234"}, 422, "record_zip_code"),
        ({"placeholders": ["a"]}, 422, "placeholders"),
        ({"meta": "x"}, 422, "meta"),
        ({"record_phone": "2125550123"}, 422, "record_phone"),  # misspelt field
        ({"workflow_key": "ZZZZZZ"}, 404, "workflow_key"),
        ({"workflow_key": 5}, 422, "workflow_key"),
        ({"api_key": "dk_000000000000_nope"}, 401, "api_key"),
        ({"api_key": None}, 401, "api_key"),
    ],
)
async def test_single_call_bad_input_names_field(
    client: TestClient, tenant: Tenant, patch: dict, status: int, field: str
) -> None:
    wf = await make_workflow(client, tenant.auth)
    body = {"api_key": tenant.key, "workflow_key": wf["workflow_key"], **ref_record()}
    for key, value in patch.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    resp = await client.post("/api/call/", json=body)
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == field
    assert error["message"]
    count = await client.get("/v1/records", headers=tenant.auth)
    assert (await count.json())["items"] == []


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"", "application/json"),
        (b'{"a": NaN}', "application/json"),
        (b"\xff\xfe", "text/plain"),
    ],
)
async def test_body_that_is_not_a_json_object_is_400(
    client: TestClient, raw: bytes, content_type: str
) -> None:
    resp = await client.post("/api/call/", data=raw, headers={"Content-Type": content_type})
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "body"


async def test_oversized_body_is_413_json(client: TestClient, tenant: Tenant) -> None:
    blob = b'{"meta": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    resp = await client.post("/api/call/", data=blob, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_revoked_key_is_refused(client: TestClient, tenant: Tenant, pool) -> None:
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1", tenant.id)
    resp = await client.get("/v1/workflows", headers=tenant.auth)
    assert resp.status == 401


async def test_stopped_workflow_takes_no_records(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        f"/v1/workflows/{wf['id']}/status", json={"status": "stopped"}, headers=tenant.auth
    )
    assert resp.status == 200
    resp = await client.post(
        "/api/call/",
        json={"api_key": tenant.key, "workflow_key": wf["workflow_key"], **ref_record()},
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["field"] == "workflow_key"


async def test_bulk_accepts_and_rejects_each_item_on_its_own(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    records = [ref_record(f"212555{i:04d}", meta={"i": i}) for i in range(10)]
    records[3]["record_phone_number"] = "123"
    records[7] = "not an object"
    resp = await client.post(
        "/api/bulk-call/",
        json={"api_key": tenant.key, "workflow_key": wf["workflow_key"], "records": records},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["accepted"] == 8
    assert body["rejected"] == 2
    assert [e["index"] for e in body["errors"]] == [3, 7]
    assert body["errors"][0]["field"] == "record_phone_number"
    assert [r["index"] for r in body["records"]] == [0, 1, 2, 4, 5, 6, 8, 9]
    stored = await _get_record(client, tenant, body["records"][4]["id"])
    assert stored["meta"] == {"i": 5}


async def test_bulk_over_limit_is_refused_whole(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    records = [ref_record() for _ in range(1001)]
    resp = await client.post(
        "/api/bulk-call/",
        json={"api_key": tenant.key, "workflow_key": wf["workflow_key"], "records": records},
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == "records"
    listing = await client.get("/v1/records", headers=tenant.auth)
    assert (await listing.json())["items"] == []


async def test_bulk_is_never_half_written(client: TestClient, tenant: Tenant, pool) -> None:
    """A database failure mid-batch leaves no rows behind."""
    wf = await make_workflow(client, tenant.auth)
    # Break the COPY itself with a trigger that fails on the fifth row.
    await pool.execute(
        """CREATE OR REPLACE FUNCTION fail_fifth() RETURNS trigger AS $$
           BEGIN IF NEW.first_name = 'Boom' THEN RAISE EXCEPTION 'boom'; END IF;
           RETURN NEW; END $$ LANGUAGE plpgsql"""
    )
    await pool.execute(
        """CREATE TRIGGER fail_fifth BEFORE INSERT ON records
           FOR EACH ROW EXECUTE FUNCTION fail_fifth()"""
    )
    try:
        records = [ref_record(f"212555{i:04d}") for i in range(10)]
        records[4]["record_first_name"] = "Boom"
        resp = await client.post(
            "/api/bulk-call/",
            json={"api_key": tenant.key, "workflow_key": wf["workflow_key"], "records": records},
        )
        assert resp.status == 500
        assert "Traceback" not in await resp.text()
    finally:
        await pool.execute("DROP TRIGGER fail_fifth ON records")
    count = await pool.fetchval("SELECT count(*) FROM records WHERE tenant_id = $1", tenant.id)
    assert count == 0


async def test_complete_stops_further_calls(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        "/api/call/",
        json={"api_key": tenant.key, "workflow_key": wf["workflow_key"], **ref_record()},
    )
    record_id = (await resp.json())["record_id"]
    resp = await client.post(
        "/api/complete/",
        json={
            "api_key": tenant.key,
            "workflow_key": wf["workflow_key"],
            "record_phone_number": "2125550123",
        },
    )
    assert resp.status == 200
    assert (await resp.json())["completed"] == [record_id]
    record = await _get_record(client, tenant, record_id)
    assert record["status"] == "completed"
    again = await client.post(
        "/api/complete/",
        json={
            "api_key": tenant.key,
            "workflow_key": wf["workflow_key"],
            "record_phone_number": "2125550123",
        },
    )
    assert again.status == 404


async def test_v1_accepts_e164_and_case_id(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.post(
        "/v1/records",
        json={
            "workflow_key": wf["workflow_key"],
            "record_phone_number": "+442071838750",
            "record_first_name": "Ada",
            "case_id": "CASE-1",
        },
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    record = await _get_record(client, tenant, (await resp.json())["record_id"])
    assert record["phone_e164"] == "+442071838750"
    assert record["case_id"] == "CASE-1"
    bad = await client.post(
        "/v1/records",
        json={
            "workflow_key": wf["workflow_key"],
            "record_phone_number": "+4420",
            "record_first_name": "Ada",
        },
        headers=tenant.auth,
    )
    assert bad.status == 422
    assert (await bad.json())["error"]["field"] == "record_phone_number"


async def test_idempotency_key_never_creates_a_second_record(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    payload = {"workflow_key": wf["workflow_key"], **ref_record(), "case_id": "C-9"}
    headers = {**tenant.auth, "Idempotency-Key": "retry-me-1"}
    answers = await asyncio.gather(
        *[client.post("/v1/records", json=payload, headers=headers) for _ in range(5)]
    )
    bodies = [await a.json() for a in answers]
    assert {a.status for a in answers} == {201}
    assert len({b["record_id"] for b in bodies}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 4
    listing = await client.get("/v1/records?case_id=C-9", headers=tenant.auth)
    assert len((await listing.json())["items"]) == 1
    other = await client.post(
        "/v1/records", json={**payload, "record_first_name": "Bob"}, headers=headers
    )
    assert other.status == 422
    assert (await other.json())["error"]["field"] == "Idempotency-Key"


async def test_bulk_v1_with_idempotency_key(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    payload = {
        "workflow_key": wf["workflow_key"],
        "records": [ref_record(f"212555{i:04d}") for i in range(3)],
    }
    headers = {**tenant.auth, "Idempotency-Key": "bulk-1"}
    first = await client.post("/v1/records/bulk", json=payload, headers=headers)
    second = await client.post("/v1/records/bulk", json=payload, headers=headers)
    assert first.status == second.status == 200
    assert await first.json() == await second.json()
    listing = await client.get("/v1/records", headers=tenant.auth)
    assert len((await listing.json())["items"]) == 3
