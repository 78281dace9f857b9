"""Record ingestion: the reference API (``/api/...``) and its ``/v1`` twins.

A batch is validated item by item; the valid items are stored in one COPY
inside one transaction (so a batch is never half-written) and the answer
lists each accepted item's id and each rejected item's index, field and
reason. Nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiohttp import web

from api.context import POOL, bearer_tenant, body_tenant, read_json_object
from api.errors import ApiError, json_response
from api.validation import FieldError, ValidRecord, normalise_phone, validate_record
from dialer import jsonutil
from dialer.ids import new_ids
from scheduler.steps import complete_list_if_done, report_records_ended

__all__ = ["MAX_BATCH", "idempotent", "ingest_batch", "insert_records", "routes"]

routes = web.RouteTableDef()

MAX_BATCH = 1000
RECORD_COPY_COLUMNS = (
    "id",
    "tenant_id",
    "workflow_id",
    "workflow_version",
    "list_id",
    "case_id",
    "phone_e164",
    "first_name",
    "last_name",
    "zip_code",
    "placeholders",
    "meta",
)


async def workflow_for_ingest(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: uuid.UUID, body: dict[str, Any]
) -> asyncpg.Record:
    key = body.get("workflow_key")
    if key is None:
        raise ApiError(422, "workflow_key is required", field="workflow_key")
    if not isinstance(key, str):
        raise ApiError(422, "workflow_key must be a string", field="workflow_key")
    row = await conn.fetchrow(
        """SELECT id, status, current_version, name, workflow_key FROM workflows
           WHERE tenant_id = $1 AND workflow_key = $2 AND deleted_at IS NULL""",
        tenant,
        key,
    )
    if row is None:
        raise ApiError(404, f"no workflow has the key {key[:16]!r}", field="workflow_key")
    if row["status"] == "stopped":
        raise ApiError(
            409, "the workflow is stopped and takes no new records", field="workflow_key"
        )
    return row


async def insert_records(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    workflow: asyncpg.Record,
    records: Sequence[ValidRecord],
    list_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    ids = new_ids(len(records))
    version = workflow["current_version"]
    workflow_id = workflow["id"]
    rows = [
        (
            record_id,
            tenant,
            workflow_id,
            version,
            list_id,
            r.case_id,
            r.phone_e164,
            r.first_name,
            r.last_name,
            r.zip_code,
            r.placeholders,
            r.meta,
        )
        for record_id, r in zip(ids, records, strict=True)
    ]
    if len(rows) == 1:
        await conn.execute(
            f"""INSERT INTO records ({", ".join(RECORD_COPY_COLUMNS)})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            *rows[0],
        )
    elif rows:
        await conn.copy_records_to_table("records", records=rows, columns=RECORD_COPY_COLUMNS)
    return ids


def validate_batch(
    items: Any, *, allow_e164: bool, allow_case_id: bool
) -> tuple[list[tuple[int, ValidRecord]], list[dict[str, Any]]]:
    if items is None:
        raise ApiError(422, "records is required (a list of records)", field="records")
    if not isinstance(items, list):
        raise ApiError(422, "records must be a list", field="records")
    if not items:
        raise ApiError(422, "records must not be empty", field="records")
    if len(items) > MAX_BATCH:
        raise ApiError(
            422, f"records holds {len(items)} items; at most {MAX_BATCH} per call", field="records"
        )
    valid: list[tuple[int, ValidRecord]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append(
                (index, validate_record(item, allow_e164=allow_e164, allow_case_id=allow_case_id))
            )
        except FieldError as exc:
            errors.append({"index": index, "field": exc.field, "message": exc.message})
    return valid, errors


async def ingest_batch(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    workflow: asyncpg.Record,
    items: Any,
    *,
    allow_e164: bool,
    list_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    valid, errors = validate_batch(items, allow_e164=allow_e164, allow_case_id=allow_e164)
    ids = await insert_records(conn, tenant, workflow, [r for _, r in valid], list_id)
    return {
        "status": "success",
        "accepted": len(ids),
        "rejected": len(errors),
        "records": [{"index": i, "id": str(rid)} for (i, _), rid in zip(valid, ids, strict=True)],
        "errors": errors,
    }


def _single(body: dict[str, Any], *, allow_e164: bool) -> ValidRecord:
    try:
        return validate_record(body, allow_e164=allow_e164, allow_case_id=allow_e164)
    except FieldError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None


Work = Callable[[asyncpg.Connection], Awaitable[tuple[int, dict[str, Any]]]]


async def idempotent(request: web.Request, tenant: uuid.UUID, work: Work) -> web.Response:
    """Run ``work`` in a transaction; with an ``Idempotency-Key``, at most once.

    The key row is inserted first in the same transaction, so a concurrent
    retry waits on it and then replays the stored answer; if the work fails,
    the key goes with the rollback and a retry runs afresh.
    """
    key = request.headers.get("Idempotency-Key")
    pool = request.app[POOL]
    if key is None:
        async with pool.acquire() as conn, conn.transaction():
            status, data = await work(conn)
        return json_response(data, status=status)
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(
            422, "Idempotency-Key must be 1-255 printable characters", field="Idempotency-Key"
        )
    digest = hashlib.sha256(
        request.method.encode() + b" " + request.path.encode() + b"\n" + await request.read()
    ).digest()
    async with pool.acquire() as conn, conn.transaction():
        fresh = await conn.fetchval(
            """INSERT INTO idempotency_keys (tenant_id, key, request_sha256) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING RETURNING true""",
            tenant,
            key,
            digest,
        )
        if not fresh:
            row = await conn.fetchrow(
                """SELECT request_sha256, status_code, response FROM idempotency_keys
                   WHERE tenant_id = $1 AND key = $2""",
                tenant,
                key,
            )
            if row["request_sha256"] != digest:
                raise ApiError(
                    422,
                    "this Idempotency-Key was already used for a different request",
                    field="Idempotency-Key",
                    code="idempotency_mismatch",
                )
            return json_response(
                row["response"], status=row["status_code"], headers={"Idempotent-Replayed": "true"}
            )
        status, data = await work(conn)
        await conn.execute(
            """UPDATE idempotency_keys SET status_code = $3, response = $4
               WHERE tenant_id = $1 AND key = $2""",
            tenant,
            key,
            status,
            data,
        )
    return json_response(data, status=status)


# -- the reference API: api_key in the body, ten-digit US numbers ---------------


@routes.post("/api/call/")
async def api_call(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    tenant = await body_tenant(request, body)
    pool = request.app[POOL]
    workflow = await workflow_for_ingest(pool, tenant, body)
    record = _single(body, allow_e164=False)
    async with pool.acquire() as conn:
        (record_id,) = await insert_records(conn, tenant, workflow, [record])
    return json_response({"status": "success", "record_id": str(record_id)})


@routes.post("/api/bulk-call/")
async def api_bulk_call(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    tenant = await body_tenant(request, body)
    pool = request.app[POOL]
    workflow = await workflow_for_ingest(pool, tenant, body)
    async with pool.acquire() as conn, conn.transaction():
        result = await ingest_batch(conn, tenant, workflow, body.get("records"), allow_e164=False)
    return json_response(result)


async def _complete(
    conn: asyncpg.Connection, tenant: uuid.UUID, body: dict[str, Any], *, allow_e164: bool
) -> dict[str, Any]:
    workflow = await workflow_for_ingest(conn, tenant, body)
    if "record_phone_number" not in body:
        raise ApiError(422, "record_phone_number is required", field="record_phone_number")
    try:
        phone = normalise_phone(body["record_phone_number"], allow_e164=allow_e164)
    except FieldError as exc:
        raise ApiError(422, exc.message, field=exc.field) from None
    # A call not yet claimed by a worker would otherwise stay queued for good: the
    # scheduler republishes it and counts it against the workflow's pacing. One a
    # worker has claimed (dialing and on) is left to finish and report as usual.
    # Calls are locked before records, in the order the event consumer takes them,
    # so the two cannot deadlock.
    await conn.execute(
        """WITH ended AS (
               UPDATE calls SET state = 'ended', disposition = 'cancelled',
                   end_reason = 'record_completed', ended_at = now()
               WHERE state = 'queued' AND record_id IN (
                   SELECT id FROM records
                   WHERE tenant_id = $1 AND workflow_id = $2 AND phone_e164 = $3
                     AND status IN ('queued', 'waiting', 'in_progress'))
               RETURNING node_run_id)
           UPDATE node_runs SET status = 'cancelled', outcome = 'cancelled', ended_at = now()
           WHERE id IN (SELECT node_run_id FROM ended) AND status = 'running'""",
        tenant,
        workflow["id"],
        phone,
    )
    rows = await conn.fetch(
        """UPDATE records SET status = 'completed', outcome = 'completed_by_api',
               completed_at = now(), updated_at = now()
           WHERE tenant_id = $1 AND workflow_id = $2 AND phone_e164 = $3
             AND status IN ('queued', 'waiting', 'in_progress')
           RETURNING id, list_id, tenant_id, workflow_id, case_id, phone_e164, attempts, meta""",
        tenant,
        workflow["id"],
        phone,
    )
    if not rows:
        raise ApiError(
            404,
            "no open record with this number in this workflow",
            field="record_phone_number",
        )
    await report_records_ended(conn, rows, workflow, "completed", "completed_by_api")
    # The last open record of a list completes the list, as a workflow's end does.
    for row in {r["list_id"]: r for r in rows if r["list_id"] is not None}.values():
        await complete_list_if_done(conn, row, workflow)
    return {"status": "success", "completed": [str(r["id"]) for r in rows]}


@routes.post("/api/complete/")
async def api_complete(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    tenant = await body_tenant(request, body)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        result = await _complete(conn, tenant, body, allow_e164=False)
    return json_response(result)


# -- /v1: bearer keys, E.164, case ids, idempotency keys ------------------------


@routes.post("/v1/records")
async def v1_create_record(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)

    async def work(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        workflow = await workflow_for_ingest(conn, tenant, body)
        record = _single(body, allow_e164=True)
        (record_id,) = await insert_records(conn, tenant, workflow, [record])
        return 201, {"status": "success", "record_id": str(record_id)}

    return await idempotent(request, tenant, work)


@routes.post("/v1/records/bulk")
async def v1_bulk(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)

    async def work(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        workflow = await workflow_for_ingest(conn, tenant, body)
        return 200, await ingest_batch(conn, tenant, workflow, body.get("records"), allow_e164=True)

    return await idempotent(request, tenant, work)


@routes.post("/v1/records/complete")
async def v1_complete(request: web.Request) -> web.Response:
    tenant = await bearer_tenant(request)
    body = await read_json_object(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        result = await _complete(conn, tenant, body, allow_e164=True)
    return json_response(result)


def decode_json_column(value: Any) -> Any:
    return jsonutil.loads(value) if isinstance(value, (str, bytes)) else value
