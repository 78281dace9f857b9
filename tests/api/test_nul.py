"""NUL characters, which PostgreSQL cannot store as text, are refused as 422 naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import SIMPLE_DEFINITION, make_workflow, ref_record
from tests.conftest import Tenant


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/records?case_id=%00", "case_id"),
        ("/v1/records?first_name=a%00b", "first_name"),
        ("/v1/records?last_name=%00", "last_name"),
        ("/v1/records/locate?case_id=%00", "case_id"),
        ("/v1/dnc?after=%00", "after"),
        ("/v1/workflows?status=%00", "status"),
    ],
)
async def test_a_nul_in_a_query_parameter_is_a_422_naming_it(
    client: TestClient, tenant: Tenant, path: str, field: str
) -> None:
    resp = await client.get(path, headers=tenant.auth)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == field
    assert error["message"] == f"query parameter {field} must not contain NUL characters"


def _workflow(**changes: Any) -> dict[str, Any]:
    return {"name": "x", "definition": SIMPLE_DEFINITION, **changes}


PROMPT_WITH_NUL = {
    **SIMPLE_DEFINITION,
    "nodes": [
        {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "a\u0000"}},
        {"id": "done", "type": "end"},
    ],
}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/workflows", _workflow(settings={"company_name": "a\u0000"}), "settings.company_name"),
        (
            "/v1/workflows",
            _workflow(definition=PROMPT_WITH_NUL),
            "definition.nodes[0].handler.text",
        ),
        ("/v1/records", ref_record(placeholders={"a": "x\u0000y"}), "placeholders.a"),
        ("/v1/records", ref_record(meta={"k\u0000": 1}), "meta.k\\u0000"),
        (
            "/v1/records/bulk",
            {"records": [ref_record(), ref_record("2125550124", meta={"t": ["ok", "\u0000"]})]},
            "records[1].meta.t[1]",
        ),
        ("/v1/dnc", {"phone_number": "2125550101", "reason": "\u0000"}, "reason"),
    ],
)
async def test_a_nul_in_a_json_body_is_a_422_naming_the_field(
    client: TestClient, tenant: Tenant, path: str, body: dict[str, Any], field: str
) -> None:
    wf = await make_workflow(client, tenant.auth)
    if path.startswith("/v1/records"):
        body = {"workflow_key": wf["workflow_key"], **body}
    resp = await client.post(path, json=body, headers=tenant.auth)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == field
    assert "NUL character" in error["message"]
    assert error["message"].startswith(field)


async def test_a_nul_in_a_workflow_update_stores_nothing(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    resp = await client.patch(
        f"/v1/workflows/{wf['id']}",
        json={"settings": {"abandon_message": "Sorry\u0000"}},
        headers=tenant.auth,
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == "settings.abandon_message"
    again = await client.get(f"/v1/workflows/{wf['id']}", headers=tenant.auth)
    assert (await again.json())["version"] == wf["version"]


async def test_an_escaped_backslash_is_not_a_nul(client: TestClient, tenant: Tenant) -> None:
    wf = await make_workflow(client, tenant.auth)
    # The JSON text holds the six characters \u0000 (an escaped backslash before them).
    resp = await client.post(
        "/v1/records",
        json={"workflow_key": wf["workflow_key"], **ref_record(meta={"path": "C:\\u0000"})},
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    record = await client.get(
        f"/v1/records/{(await resp.json())['record_id']}", headers=tenant.auth
    )
    assert (await record.json())["meta"] == {"path": "C:\\u0000"}
