"""The do-not-call list API: add, check, import, page, remove; per tenant."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Tenant


async def test_dnc_lifecycle(client: TestClient, tenant: Tenant, other_tenant: Tenant) -> None:
    added = await client.post(
        "/v1/dnc", json={"phone_number": "2125550123", "reason": "asked"}, headers=tenant.auth
    )
    assert added.status == 201
    assert (await added.json())["phone_e164"] == "+12125550123"
    check = await (await client.get("/v1/dnc?phone=%2B12125550123", headers=tenant.auth)).json()
    assert check["on_list"] is True and check["reason"] == "asked"
    theirs = await (await client.get("/v1/dnc?phone=2125550123", headers=other_tenant.auth)).json()
    assert theirs["on_list"] is False  # another tenant's list is its own

    imported = await client.post(
        "/v1/dnc/import",
        json={"phone_numbers": ["3125550100", "+442071838750", "12", 7, "3125550100"]},
        headers=tenant.auth,
    )
    body = await imported.json()
    assert (body["accepted"], body["rejected"]) == (3, 2)
    assert [e["index"] for e in body["errors"]] == [2, 3]

    page1 = await (await client.get("/v1/dnc?limit=2", headers=tenant.auth)).json()
    page2 = await (
        await client.get(
            "/v1/dnc", params={"limit": 2, "after": page1["next_after"]}, headers=tenant.auth
        )
    ).json()
    numbers = [i["phone_e164"] for i in page1["items"] + page2["items"]]
    assert numbers == sorted(["+12125550123", "+13125550100", "+442071838750"])
    assert page2["next_after"] is None

    assert (await client.delete("/v1/dnc/2125550123", headers=other_tenant.auth)).status == 404
    assert (await client.delete("/v1/dnc/2125550123", headers=tenant.auth)).status == 204
    check = await (await client.get("/v1/dnc?phone=2125550123", headers=tenant.auth)).json()
    assert check["on_list"] is False
    bad = await client.post("/v1/dnc", json={"phone_number": "555"}, headers=tenant.auth)
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "phone_number"


@pytest.mark.parametrize("path", ["/v1/dnc?phone=+13125550100", "/v1/records?phone=+13125550100"])
async def test_an_unencoded_plus_in_a_query_gets_a_hint(
    client: TestClient, tenant: Tenant, path: str
) -> None:
    # A query string reads '+' as a space: the error says how to send it.
    resp = await client.get(path, headers=tenant.auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["field"] == "phone"
    assert error["message"].endswith("a '+' in a query string must be sent as %2B")
    fine = await client.get(path.replace("+", "%2B"), headers=tenant.auth)
    assert fine.status == 200, await fine.text()
