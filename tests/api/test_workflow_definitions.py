"""Definitions the scheduler could not run are refused at the API, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.helpers import SIMPLE_DEFINITION, make_workflow
from tests.conftest import Tenant

CALL = {"id": "call", "type": "call", "handler": {"type": "prompt", "text": "x"}}
BRANCH = {
    "id": "b",
    "type": "branch",
    "condition": {"field": "meta.x", "operator": "equals", "value": "1"},
}

REFUSED = {
    "node type a list": (
        {"start": "call", "nodes": [{**CALL, "type": ["call"]}]},
        "definition.nodes[0].type",
    ),
    "edge from a list": (
        {"start": "call", "nodes": [CALL], "edges": [{"from": ["call"], "to": "call"}]},
        "definition.edges[0].from",
    ),
    "edge on a list": (
        {"start": "call", "nodes": [CALL], "edges": [{"from": "call", "on": ["x"], "to": "call"}]},
        "definition.edges[0].on",
    ),
    "edge on an object": (
        {"start": "call", "nodes": [CALL], "edges": [{"from": "call", "on": {}, "to": "call"}]},
        "definition.edges[0].on",
    ),
    "branch looping to itself": (
        {
            "start": "b",
            "nodes": [BRANCH, CALL],
            "edges": [
                {"from": "b", "on": "true", "to": "call"},
                {"from": "b", "on": "false", "to": "b"},
            ],
        },
        "definition.edges[1]",
    ),
    "branch, email, branch": (
        {
            "start": "b",
            "nodes": [
                BRANCH,
                {
                    "id": "e",
                    "type": "email",
                    "subject": "Hi",
                    "body": "Hi",
                    "to": "{{placeholders.email}}",
                },
                CALL,
            ],
            "edges": [
                {"from": "b", "on": "true", "to": "e"},
                {"from": "b", "on": "false", "to": "call"},
                {"from": "e", "to": "b"},
            ],
        },
        "definition.edges[2]",
    ),
    "a header name no request can carry": (
        {
            "start": "h",
            "nodes": [
                {"id": "h", "type": "webhook", "url": "https://x.example/", "headers": {"a b": "1"}}
            ],
            "edges": [],
        },
        "definition.nodes[0].headers",
    ),
    "a fixed address that is none": (
        {
            "start": "e",
            "nodes": [{"id": "e", "type": "email", "subject": "Hi", "body": "Hi", "to": "ops"}],
            "edges": [],
        },
        "definition.nodes[0].to",
    ),
}


@pytest.mark.parametrize(("definition", "field"), REFUSED.values(), ids=REFUSED.keys())
async def test_create_refuses_with_a_422_naming_the_field(
    client: TestClient, tenant: Tenant, definition: dict[str, Any], field: str
) -> None:
    resp = await client.post(
        "/v1/workflows", json={"name": "x", "definition": definition}, headers=tenant.auth
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["field"] == field


async def test_update_refuses_a_loop_and_keeps_the_version(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    looping, field = REFUSED["branch looping to itself"]
    resp = await client.patch(
        f"/v1/workflows/{wf['id']}", json={"definition": looping}, headers=tenant.auth
    )
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] == field
    assert "b -> b" in error["message"]
    got = await (await client.get(f"/v1/workflows/{wf['id']}", headers=tenant.auth)).json()
    assert (got["version"], got["definition"]) == (1, SIMPLE_DEFINITION)
