"""Small builders shared by the API tests."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

SIMPLE_DEFINITION: dict[str, Any] = {
    "start": "call",
    "nodes": [
        {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "Hello"}},
        {"id": "done", "type": "end"},
    ],
    "edges": [{"from": "call", "on": "default", "to": "done"}],
}


async def make_workflow(
    client: TestClient, auth: dict[str, str], *, status: str = "active", name: str = "wf"
) -> dict[str, Any]:
    resp = await client.post(
        "/v1/workflows",
        json={"name": name, "definition": SIMPLE_DEFINITION, "status": status},
        headers=auth,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


def ref_record(phone: str = "2125550123", **extra: Any) -> dict[str, Any]:
    return {"record_phone_number": phone, "record_first_name": "Anna", **extra}
