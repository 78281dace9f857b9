"""Values JSON allows but the pipeline could not carry: refused with a 4xx, never a 500.

``meta`` nested hundreds of levels deep once passed ingestion and then broke
the dial job's encoder (the record stuck, the log flooded) or, deeper still,
the jsonb encoder (a 500); a number beyond a double's range was stored as
null. Integers of any width, which JSON does carry, are kept exactly.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from api.validation import MAX_DEPTH, FieldError, validate_record
from dialer import jsonutil
from tests.api.helpers import make_workflow, ref_record
from tests.conftest import Tenant


def _nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


def test_meta_as_deep_as_the_limit_is_kept_one_level_more_is_refused() -> None:
    record = validate_record(
        ref_record(meta=_nested(MAX_DEPTH)), allow_e164=False, allow_case_id=False
    )
    assert record.meta == _nested(MAX_DEPTH)
    for field in ("meta", "placeholders"):
        with pytest.raises(FieldError) as caught:
            validate_record(
                ref_record(**{field: _nested(MAX_DEPTH + 1)}), allow_e164=False, allow_case_id=False
            )
        assert (caught.value.field, caught.value.message) == (
            field,
            f"is nested deeper than {MAX_DEPTH} levels",
        )


def test_a_number_beyond_a_double_is_refused_when_read() -> None:
    for raw in (b'{"x": 1e400}', b'{"x": -1e400}', b'{"x": 1e400, "y": 123456789012345678901}'):
        with pytest.raises(ValueError, match="too large"):
            jsonutil.loads(raw)
    assert jsonutil.loads(b'{"x": 1e300}') == {"x": 1e300}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 600, 1000, 5000])
async def test_deep_meta_is_a_422_naming_it(
    client: TestClient, tenant: Tenant, pool: asyncpg.Pool, depth: int
) -> None:
    wf = await make_workflow(client, tenant.auth)
    body = {"workflow_key": wf["workflow_key"], **ref_record(meta=_nested(depth))}
    # Built by hand: the JSON encoders themselves stop short of 5000 levels.
    raw = jsonutil.dumps_bytes({**body, "meta": {}}).replace(
        b'"meta":{}', b'"meta":{"a":' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"
    )
    resp = await client.post(
        "/v1/records", data=raw, headers={**tenant.auth, "Content-Type": "application/json"}
    )
    assert resp.status in (400, 422), await resp.text()
    error = (await resp.json())["error"]
    assert error["field"] in ("meta", "body")
    assert await pool.fetchval("SELECT count(*) FROM records WHERE tenant_id = $1", tenant.id) == 0


async def test_a_huge_number_is_a_400_and_a_wide_integer_is_kept(
    client: TestClient, tenant: Tenant
) -> None:
    wf = await make_workflow(client, tenant.auth)
    base = {"workflow_key": wf["workflow_key"], **ref_record()}
    raw = jsonutil.dumps_bytes({**base, "meta": {"x": 1}}).replace(b'"x":1', b'"x":1e400')
    resp = await client.post(
        "/v1/records", data=raw, headers={**tenant.auth, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert "1e400 is too large" in (await resp.json())["error"]["message"]
    wide = {"order_no": 99999999999999999999, "id": -(2**70)}
    resp = await client.post(
        "/v1/records",
        data=jsonutil.dumps_bytes({**base, "placeholders": wide}),
        headers=tenant.auth,
    )
    assert resp.status == 201, await resp.text()
    record_id = (await resp.json())["record_id"]
    got = await client.get(f"/v1/records/{record_id}", headers=tenant.auth)
    assert jsonutil.loads(await got.read())["placeholders"] == wide
