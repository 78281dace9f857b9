"""The OpenAPI 3.1 document for every route, built once at start-up."""

from __future__ import annotations

from typing import Any

__all__ = ["build_openapi"]

_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
_OBJ = {"type": "object"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(
        _ref("Error"),
        "The body is not a JSON object, or a parameter or JSON text holds a NUL character",
    ),
    "401": _json(_ref("Error"), "Missing, wrong or revoked API key"),
    "404": _json(_ref("Error"), "No such item (or it belongs to another tenant)"),
    "405": _json(_ref("Error"), "Method not allowed"),
    "409": _json(_ref("Error"), "The item's state forbids this"),
    "413": _json(_ref("Error"), "The body is too large"),
    "422": _json(_ref("Error"), "A field is missing or invalid; error.field names it"),
    "500": _json(_ref("Error"), "Internal error (never expected; logged)"),
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    bearer: bool = True,
    idempotent: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_ERRORS}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    parameters = list(params or [])
    if idempotent:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "A retried POST with the same key replays the first answer.",
            }
        )
    if parameters:
        op["parameters"] = parameters
    op["security"] = [{"bearer": []}] if bearer else []
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size"),
    _query("cursor", _UUID, "The next_cursor of the previous page"),
]

_RECORD_FIELDS: dict[str, Any] = {
    "record_phone_number": {
        "type": "string",
        "description": "Ten digits (US, no +1); under /v1 also E.164 such as +442071838750",
        "pattern": "^([2-9][0-9]{2}[2-9][0-9]{6}|\\+[1-9][0-9]{6,14})$",
        "examples": ["2125550123"],
    },
    "record_first_name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "\\S"},
    "record_last_name": {"type": ["string", "null"], "maxLength": 100},
    "record_zip_code": {"type": ["string", "null"], "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
    "placeholders": {
        "type": ["object", "null"],
        "description": "Any object; stored and returned as given (null means {})",
    },
    "meta": {
        "type": ["object", "null"],
        "description": "Any object; returned as given in every webhook (null means {})",
    },
}


def _schemas() -> dict[str, Any]:
    ref_record = {
        "type": "object",
        "required": ["record_phone_number", "record_first_name"],
        "properties": _RECORD_FIELDS,
        "additionalProperties": False,
    }
    v1_record = {
        "type": "object",
        "required": ["record_phone_number", "record_first_name"],
        "properties": {**_RECORD_FIELDS, "case_id": {"type": "string", "maxLength": 128}},
        "additionalProperties": False,
    }
    bulk_result = {
        "type": "object",
        "required": ["status", "accepted", "rejected", "records", "errors"],
        "properties": {
            "status": {"const": "success"},
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "records": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "id"],
                    "properties": {"index": {"type": "integer"}, "id": _UUID},
                },
            },
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "field", "message"],
                    "properties": {
                        "index": {"type": "integer"},
                        "field": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
    definition = {
        "type": "object",
        "required": ["start", "nodes"],
        "description": "Nodes (call, wait, branch, sms, email, webhook, end) and edges by outcome",
        "properties": {
            "start": {"type": "string"},
            "nodes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "type"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {
                            "enum": ["call", "wait", "branch", "sms", "email", "webhook", "end"]
                        },
                    },
                },
            },
            "edges": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["from", "to"],
                    "properties": {
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                        "on": {"type": "string"},
                    },
                },
            },
        },
    }
    workflow = {
        "type": "object",
        "required": ["id", "workflow_key", "name", "status", "version", "definition", "settings"],
        "properties": {
            "id": _UUID,
            "workflow_key": {"type": "string", "pattern": "^[A-Za-z0-9]{6}$"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "status": {"enum": ["draft", "active", "paused", "stopped"]},
            "version": {"type": "integer"},
            "definition": definition,
            "settings": _OBJ,
            "created_at": _TIME,
            "updated_at": _TIME,
        },
    }
    record = {
        "type": "object",
        "required": ["id", "workflow_id", "phone_e164", "status", "placeholders", "meta"],
        "properties": {
            "id": _UUID,
            "workflow_id": _UUID,
            "workflow_key": {"type": "string"},
            "workflow_version": {"type": "integer"},
            "list_id": _nullable(_UUID),
            "case_id": _nullable({"type": "string"}),
            "phone_e164": {"type": "string"},
            "record_phone_number": {"type": "string"},
            "record_first_name": {"type": "string"},
            "record_last_name": {"type": "string"},
            "record_zip_code": _nullable({"type": "string"}),
            "placeholders": _OBJ,
            "meta": _OBJ,
            "status": {
                "enum": [
                    "queued",
                    "in_progress",
                    "waiting",
                    "completed",
                    "cancelled",
                    "dnc",
                    "failed",
                ]
            },
            "current_node": _nullable({"type": "string"}),
            "attempts": {"type": "integer"},
            "next_attempt_at": _nullable(_TIME),
            "outcome": _nullable({"type": "string"}),
            "created_at": _TIME,
            "updated_at": _TIME,
            "completed_at": _nullable(_TIME),
        },
    }
    list_schema = {
        "type": "object",
        "required": ["id", "workflow_id", "name", "status", "counts"],
        "properties": {
            "id": _UUID,
            "workflow_id": _UUID,
            "name": {"type": "string"},
            "settings": _OBJ,
            "status": {"enum": ["active", "cancelled", "completed"]},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "created_at": _TIME,
            "updated_at": _TIME,
            "cancelled_at": _nullable(_TIME),
            "completed_at": _nullable(_TIME),
        },
    }
    error = {
        "type": "object",
        "required": ["status", "error"],
        "properties": {
            "status": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                    "problems": {"type": "array", "items": _OBJ},
                },
            },
        },
    }
    return {
        **_webhook_schemas(),
        "Error": error,
        "RefRecord": ref_record,
        "V1Record": v1_record,
        "BulkResult": bulk_result,
        "Definition": definition,
        "Workflow": workflow,
        "Record": record,
        "List": list_schema,
    }


def _batch(item_schema: str) -> dict[str, Any]:
    # Items are judged one by one: an item that breaks the record schema is
    # rejected in errors[] while the rest are stored, so the array takes any item.
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": 1000,
        "items": {"description": f"A {item_schema}; an invalid item is rejected on its own"},
    }


def _page_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": schema},
            "next_cursor": _nullable(_UUID),
        },
    }


def _paths() -> dict[str, Any]:
    api_key = {"api_key": {"type": "string"}, "workflow_key": {"type": "string"}}
    ok_single = {
        "type": "object",
        "required": ["status", "record_id"],
        "properties": {"status": {"const": "success"}, "record_id": _UUID},
    }
    completed = {
        "type": "object",
        "required": ["status", "completed"],
        "properties": {
            "status": {"const": "success"},
            "completed": {"type": "array", "items": _UUID},
        },
    }
    complete_body = {
        "type": "object",
        "required": ["workflow_key", "record_phone_number"],
        "properties": {**api_key, "record_phone_number": {"type": "string"}},
    }
    workflow_id = _path("workflow_id", "The workflow's id or its six-character workflow_key")
    workflow_input: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": {"type": "string", "maxLength": 5000},
            "definition": _ref("Definition"),
            "settings": _OBJ,
            "status": {"enum": ["draft", "active", "paused"]},
            "template": {"type": "string"},
        },
        "additionalProperties": False,
    }
    workflow_patch = {
        "type": "object",
        "properties": {
            k: v for k, v in workflow_input["properties"].items() if k not in {"status", "template"}
        },
        "additionalProperties": False,
    }
    list_settings = {
        "type": "object",
        "properties": {
            "priority": {"type": "integer", "minimum": 0, "maximum": 100},
            "start_at": _TIME,
        },
        "additionalProperties": False,
    }
    template = {"type": "object", "required": ["id", "name", "definition", "settings"]}
    wf = _ref("Workflow")
    return {
        "/api/call/": {
            "post": _op(
                "Add one record (reference API; api_key in the body)",
                {"200": _json(ok_single, "Stored")},
                body={
                    "type": "object",
                    "required": [
                        "api_key",
                        "workflow_key",
                        "record_phone_number",
                        "record_first_name",
                    ],
                    "properties": {**api_key, **_RECORD_FIELDS},
                },
                bearer=False,
            )
        },
        "/api/bulk-call/": {
            "post": _op(
                "Add up to 1,000 records; each accepted or rejected on its own",
                {"200": _json(_ref("BulkResult"), "Per-item results")},
                body={
                    "type": "object",
                    "required": ["api_key", "workflow_key", "records"],
                    "properties": {
                        **api_key,
                        "records": _batch("RefRecord"),
                    },
                },
                bearer=False,
            )
        },
        "/api/complete/": {
            "post": _op(
                "Mark a number's open records complete: they are not called again",
                {"200": _json(completed, "Completed")},
                body={**complete_body, "required": ["api_key", *complete_body["required"]]},
                bearer=False,
            )
        },
        "/v1/records": {
            "post": _op(
                "Add one record",
                {"201": _json(ok_single, "Stored")},
                body={
                    **_ref("V1Record"),
                },
                idempotent=True,
            ),
            "get": _op(
                "Search records",
                {"200": _json(_page_of(_ref("Record")), "A page of records")},
                params=[
                    _query("phone", {"type": "string"}, "Ten digits or E.164"),
                    _query("case_id", {"type": "string"}, "Case id"),
                    _query("first_name", {"type": "string"}, "First name (case-insensitive)"),
                    _query("last_name", {"type": "string"}, "Last name (case-insensitive)"),
                    _query("workflow_id", _UUID, "Workflow"),
                    _query("list_id", _UUID, "List"),
                    _query("status", {"type": "string"}, "Record status"),
                    *_PAGE,
                ],
            ),
        },
        "/v1/records/bulk": {
            "post": _op(
                "Add up to 1,000 records",
                {"200": _json(_ref("BulkResult"), "Per-item results")},
                body={
                    "type": "object",
                    "required": ["workflow_key", "records"],
                    "properties": {
                        "workflow_key": {"type": "string"},
                        "records": _batch("V1Record"),
                    },
                },
                idempotent=True,
            )
        },
        "/v1/records/complete": {
            "post": _op(
                "Mark a number's open records complete",
                {"200": _json(completed, "Completed")},
                body=complete_body,
            )
        },
        "/v1/records/locate": {
            "get": _op(
                "Which workflows hold a case id or a callee number",
                {"200": _json({"type": "object", "required": ["items"]}, "Workflows")},
                params=[
                    _query("case_id", {"type": "string"}, "Case id"),
                    _query("phone", {"type": "string"}, "Ten digits or E.164"),
                ],
            )
        },
        "/v1/records/{record_id}": {
            "parameters": [_path("record_id", "Record id")],
            "get": _op("Get a record", {"200": _json(_ref("Record"), "The record")}),
            "patch": _op(
                "Edit a record's names, ZIP, placeholders, meta or case id",
                {"200": _json(_ref("Record"), "The record")},
                body={
                    "type": "object",
                    "properties": {
                        k: v for k, v in _RECORD_FIELDS.items() if k != "record_phone_number"
                    }
                    | {"case_id": {"type": "string"}},
                    "additionalProperties": False,
                },
            ),
            "delete": _op("Delete a record", {"204": {"description": "Deleted"}}),
        },
        "/v1/workflow-templates": {
            "get": _op(
                "Built-in workflow templates",
                {"200": _json({"type": "object", "required": ["items"]}, "Templates")},
            )
        },
        "/v1/workflow-templates/{template_id}": {
            "parameters": [_path("template_id", "Template id")],
            "get": _op("A template", {"200": _json(template, "The template")}),
        },
        "/v1/workflows": {
            "post": _op(
                "Create a workflow (from a definition or a template)",
                {"201": _json(wf, "Created")},
                body=workflow_input,
            ),
            "get": _op(
                "List workflows",
                {"200": _json(_page_of(wf), "A page of workflows")},
                params=[_query("status", {"type": "string"}, "Only this status"), *_PAGE],
            ),
        },
        "/v1/workflows/{workflow_id}": {
            "parameters": [workflow_id],
            "get": _op("Get a workflow", {"200": _json(wf, "The workflow")}),
            "patch": _op(
                "Update a workflow; a new definition or settings makes a new version",
                {"200": _json(wf, "The workflow")},
                body=workflow_patch,
            ),
            "delete": _op("Stop and delete a workflow", {"204": {"description": "Deleted"}}),
        },
        "/v1/workflows/{workflow_id}/status": {
            "parameters": [workflow_id],
            "post": _op(
                "Set the status (draft -> active <-> paused -> stopped)",
                {"200": _json(wf, "The workflow")},
                body={
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"enum": ["draft", "active", "paused", "stopped"]}},
                },
            ),
        },
        "/v1/workflows/{workflow_id}/toggle": {
            "parameters": [workflow_id],
            "post": _op("Toggle active and paused", {"200": _json(wf, "The workflow")}),
        },
        "/v1/workflows/{workflow_id}/versions": {
            "parameters": [workflow_id],
            "get": _op(
                "Every version of the definition",
                {"200": _json({"type": "object", "required": ["items"]}, "Versions")},
            ),
        },
        "/v1/workflows/{workflow_id}/lists": {
            "parameters": [workflow_id],
            "post": _op(
                "Add a list of records to the workflow",
                {"201": _json({"type": "object", "required": ["list", "accepted"]}, "Created")},
                body={
                    "type": "object",
                    "required": ["name", "records"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "settings": list_settings,
                        "records": _batch("V1Record"),
                    },
                    "additionalProperties": False,
                },
                idempotent=True,
            ),
            "get": _op(
                "The workflow's lists",
                {"200": _json(_page_of(_ref("List")), "A page of lists")},
                params=_PAGE,
            ),
        },
        "/v1/lists/{list_id}": {
            "parameters": [_path("list_id", "List id")],
            "get": _op(
                "Get a list with counts by status", {"200": _json(_ref("List"), "The list")}
            ),
            "patch": _op(
                "Rename a list or change its settings",
                {"200": _json(_ref("List"), "The list")},
                body={
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "settings": list_settings,
                    },
                    "additionalProperties": False,
                },
            ),
        },
        "/v1/lists/{list_id}/cancel": {
            "parameters": [_path("list_id", "List id")],
            "post": _op(
                "Cancel a list: queued records are cancelled, calls in progress finish",
                {"200": _json(_ref("List"), "The list")},
            ),
        },
        **_webhook_paths(),
        **_dnc_paths(),
        **_trunk_paths(),
        **_lookup_paths(),
        "/v1/live": {
            "get": {
                "summary": "The tenant's events as Server-Sent Events (resume with Last-Event-ID)",
                "security": [{"bearer": []}],
                "parameters": [
                    _query("after", {"type": "integer", "minimum": 0}, "Resume after this event"),
                ],
                "responses": {
                    "200": {
                        "description": "An endless event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_ERRORS,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (calls, attempts, webhooks, abandonment)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "500": _json(_ref("Error"), "Unhealthy"),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness and database reachability",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "Healthy"),
                    "500": _json(_ref("Error"), "Unhealthy"),
                },
            }
        },
    }


_EVENT_TYPES = [
    "call.completed",
    "record.completed",
    "list.completed",
    "workflow.status_changed",
    "recording.available",
]
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_NUM = {"type": ["number", "null"]}
_NINT = {"type": ["integer", "null"]}
_NTIME = _nullable(_TIME)


def _obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _webhook_schemas() -> dict[str, Any]:
    endpoint = _obj(
        ["id", "url", "events", "enabled"],
        {
            "id": _UUID,
            "url": _STR,
            "description": _STR,
            "events": {"type": "array", "items": {"enum": _EVENT_TYPES}},
            "workflow_id": _nullable(_UUID),
            "enabled": {"type": "boolean"},
            "disabled_reason": _NSTR,
            "disabled_at": _NTIME,
            "failing_since": _NTIME,
            "last_success_at": _NTIME,
            "last_failure_at": _NTIME,
            "previous_secret_expires_at": _NTIME,
            "created_at": _TIME,
            "updated_at": _TIME,
        },
    )
    with_secret = {
        **endpoint,
        "required": [*endpoint["required"], "secret"],
        "properties": {
            **endpoint["properties"],
            "secret": {
                "type": "string",
                "pattern": "^whsec_[A-Za-z0-9+/=]+$",
                "description": "Shown once; verify signatures with it (Standard Webhooks)",
            },
        },
    }
    attempt = _obj(
        ["id", "event_id", "endpoint_id", "attempt", "outcome"],
        {
            "id": {"type": "integer"},
            "event_id": _UUID,
            "event_type": _STR,
            "endpoint_id": _UUID,
            "delivery_id": {"type": "integer"},
            "attempt": {"type": "integer"},
            "url": _STR,
            "outcome": {
                "enum": ["succeeded", "failed", "gone", "refused", "interrupted"],
                "description": "interrupted: the notifier stopped before the answer came",
            },
            "status_code": _NINT,
            "error": _NSTR,
            "duration_ms": _NUM,
            "response_excerpt": _NSTR,
            "retry_after_s": _NUM,
            "started_at": _TIME,
            "ended_at": _NTIME,
            "next_attempt_at": _NTIME,
            "delivery_status": {"enum": ["pending", "succeeded", "failed", "cancelled"]},
        },
    )
    event = _obj(
        ["id", "type", "created_at", "payload"],
        {
            "id": _UUID,
            "type": {"enum": _EVENT_TYPES},
            "record_id": _nullable(_UUID),
            "workflow_id": _nullable(_UUID),
            "created_at": _TIME,
            "dispatched_at": _NTIME,
            "payload": _OBJ,
        },
    )
    recording = _obj(
        ["id", "call_id", "content_type", "download_url"],
        {
            "id": _UUID,
            "call_id": _UUID,
            "content_type": _STR,
            "bytes": {"type": "integer"},
            "duration_s": {"type": "number"},
            "sha256": _NSTR,
            "created_at": _TIME,
            "expires_at": _NTIME,
            "deleted_at": _NTIME,
            "download_url": {
                "type": ["string", "null"],
                "description": "Signed and expiring; null without DIALER_WEBHOOK_SECRET",
            },
            "download_expires_at": _NTIME,
        },
    )
    call = _obj(
        ["id", "record_id", "workflow_id", "phone", "state", "recordings"],
        {
            "id": _UUID,
            "call_id": _UUID,
            "record_id": _UUID,
            "case_id": _NSTR,
            "workflow_id": _UUID,
            "workflow_key": _STR,
            "node_id": _NSTR,
            "node_run_id": _nullable(_UUID),
            "attempt": {"type": "integer"},
            "phone": _STR,
            "callee_number": _STR,
            "meta": _OBJ,
            "state": {"enum": ["queued", "dialing", "ringing", "answered", "ended"]},
            "disposition": _NSTR,
            "sip_status": _NINT,
            "sip_reason": _NSTR,
            "hangup_by": _NSTR,
            "amd_verdict": _NSTR,
            "bot_result": {"type": ["object", "null"]},
            "media_stats": {"type": ["object", "null"]},
            "created_at": _TIME,
            "dialing_at": _NTIME,
            "ringing_at": _NTIME,
            "answered_at": _NTIME,
            "ended_at": _NTIME,
            "ring_s": _NUM,
            "talk_s": _NUM,
            "recordings": {"type": "array", "items": _ref("Recording")},
        },
    )
    node_run = _obj(
        ["id", "task_id", "node_id", "node_type", "status"],
        {
            "id": _UUID,
            "nodetask_id": _UUID,
            "task_id": _UUID,
            "record_id": _UUID,
            "workflow_id": _UUID,
            "nodetask_name": _STR,
            "node_id": _STR,
            "node_type": _STR,
            "status": {"enum": ["running", "completed", "failed", "cancelled"]},
            "outcome": _NSTR,
            "detail": _OBJ,
            "case_id": _NSTR,
            "callee_number": _STR,
            "started_at": _TIME,
            "ended_at": _NTIME,
        },
    )
    notice = _obj(
        ["id", "kind", "message", "created_at"],
        {
            "id": _UUID,
            "kind": _STR,
            "subject_id": _nullable(_UUID),
            "message": _STR,
            "detail": _OBJ,
            "created_at": _TIME,
        },
    )
    return {
        "WebhookEndpoint": endpoint,
        "WebhookEndpointWithSecret": with_secret,
        "WebhookAttempt": attempt,
        "WebhookEvent": event,
        "Recording": recording,
        "Call": call,
        "NodeRun": node_run,
        "Notice": notice,
    }


_403 = {"403": _json(_ref("Error"), "The link is expired, altered or for another recording")}
_410 = {"410": _json(_ref("Error"), "The recording was deleted")}


def _optional_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _webhook_paths() -> dict[str, Any]:
    endpoint_id = _path("endpoint_id", "Webhook endpoint id")
    event_id = _path("event_id", "Event id (the webhook-id header and the payload's id)")
    events = {"type": "array", "items": {"enum": _EVENT_TYPES}, "maxItems": 10}
    fields = {
        "url": {
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "description": "http(s); private, loopback and metadata addresses are refused",
        },
        "events": {**events, "description": "Only these events; empty or absent: all"},
        "workflow_id": {
            "type": ["string", "null"],
            "description": "Only this workflow's events (its id or key)",
        },
        "description": {"type": "string", "maxLength": 500},
    }
    attempts_page = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": _ref("WebhookAttempt")},
            "next_after": _NINT,
        },
    }
    attempt_params = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size"),
        _query("after", {"type": "integer", "minimum": 0}, "The next_after of the last page"),
    ]
    rotate = _op(
        "Rotate the secret: a new one (shown once); the old one signs too for overlap_s",
        {"200": _json(_ref("WebhookEndpointWithSecret"), "The endpoint and its new secret")},
    )
    rotate["requestBody"] = _optional_body(
        {
            "type": "object",
            "properties": {
                "overlap_s": {"type": "integer", "minimum": 0, "maximum": 604800, "default": 86400}
            },
            "additionalProperties": False,
        }
    )
    redeliver = _op(
        "Deliver the event again (same webhook-id) to one endpoint or every matching one",
        {
            "202": _json(
                _obj(
                    ["event_id", "deliveries"],
                    {"event_id": _UUID, "deliveries": {"type": "array", "items": _OBJ}},
                ),
                "Queued",
            )
        },
    )
    redeliver["requestBody"] = _optional_body(
        {
            "type": "object",
            "properties": {"endpoint_id": {"type": "string", "format": "uuid"}},
            "additionalProperties": False,
        }
    )
    return {
        "/v1/webhook-endpoints": {
            "post": _op(
                "Register a webhook endpoint; the answer shows its secret once",
                {"201": _json(_ref("WebhookEndpointWithSecret"), "Created")},
                body={
                    "type": "object",
                    "required": ["url"],
                    "properties": fields,
                    "additionalProperties": False,
                },
            ),
            "get": _op(
                "List webhook endpoints (never their secrets)",
                {"200": _json(_page_of(_ref("WebhookEndpoint")), "A page of endpoints")},
                params=_PAGE,
            ),
        },
        "/v1/webhook-endpoints/{endpoint_id}": {
            "parameters": [endpoint_id],
            "get": _op("Get an endpoint", {"200": _json(_ref("WebhookEndpoint"), "It")}),
            "patch": _op(
                "Change an endpoint; enabled: true revives a disabled one",
                {"200": _json(_ref("WebhookEndpoint"), "The endpoint")},
                body={
                    "type": "object",
                    "properties": {**fields, "enabled": {"type": "boolean"}},
                    "additionalProperties": False,
                },
            ),
            "delete": _op(
                "Delete an endpoint; its pending deliveries are cancelled",
                {"204": {"description": "Deleted"}},
            ),
        },
        "/v1/webhook-endpoints/{endpoint_id}/rotate": {"parameters": [endpoint_id], "post": rotate},
        "/v1/webhook-endpoints/{endpoint_id}/attempts": {
            "parameters": [endpoint_id],
            "get": _op(
                "Every delivery attempt to this endpoint, oldest first",
                {"200": _json(attempts_page, "A page of attempts")},
                params=attempt_params,
            ),
        },
        "/v1/webhook-events": {
            "get": _op(
                "The tenant's events, newest first",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {
                                "items": {"type": "array", "items": _ref("WebhookEvent")},
                                "next_cursor": _nullable(_UUID),
                            },
                        },
                        "A page of events",
                    )
                },
                params=[
                    _query("type", {"enum": _EVENT_TYPES}, "Only this event type"),
                    _query("record_id", _UUID, "Only this record's events"),
                    *_PAGE,
                ],
            )
        },
        "/v1/webhook-events/{event_id}": {
            "parameters": [event_id],
            "get": _op("An event", {"200": _json(_ref("WebhookEvent"), "The event")}),
        },
        "/v1/webhook-events/{event_id}/attempts": {
            "parameters": [event_id],
            "get": _op(
                "Every attempt to deliver this event",
                {"200": _json(attempts_page, "A page of attempts")},
                params=attempt_params,
            ),
        },
        "/v1/webhook-events/{event_id}/redeliver": {"parameters": [event_id], "post": redeliver},
        "/v1/notices": {
            "get": _op(
                "Notices to the tenant (e.g. webhook_endpoint.disabled), newest first",
                {"200": _json(_page_of(_ref("Notice")), "A page of notices")},
                params=_PAGE,
            )
        },
    }


def _lookup_paths() -> dict[str, Any]:
    recording_id = _path("recording_id", "Recording id")
    call_id = _path("call_id", "Call id")
    workflow_id = _path("workflow_id", "The workflow's id or its six-character workflow_key")
    phone = _query("phone", {"type": "string"}, "Ten digits or E.164")
    download = _op(
        "Download the audio (Range supported): a signed link, or the API key",
        {
            "200": {
                "description": "The recording",
                "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            "206": {
                "description": "Part of the recording",
                "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_403,
            **_410,
        },
        params=[
            _query("expires", {"type": "integer", "minimum": 0}, "Unix time the link expires"),
            _query("sig", {"type": "string"}, "The link's signature"),
        ],
    )
    download["security"] = [{}, {"bearer": []}]
    return {
        "/v1/recordings": {
            "get": _op(
                "Recordings, e.g. every recording of one number, with signed links",
                {"200": _json(_page_of(_ref("Recording")), "A page of recordings")},
                params=[
                    phone,
                    _query("workflow_id", _UUID, "Workflow"),
                    _query("call_id", _UUID, "Call"),
                    _query("record_id", _UUID, "Record (task)"),
                    _query("include_deleted", {"enum": ["true", "false"]}, "Deleted ones too"),
                    *_PAGE,
                ],
            )
        },
        "/v1/recordings/{recording_id}": {
            "parameters": [recording_id],
            "get": _op(
                "A recording and a fresh signed link", {"200": _json(_ref("Recording"), "It")}
            ),
            "patch": _op(
                "Set when this recording is deleted (null: keep)",
                {"200": _json(_ref("Recording"), "The recording")},
                body={
                    "type": "object",
                    "required": ["expires_at"],
                    "properties": {"expires_at": _nullable(_TIME)},
                    "additionalProperties": False,
                },
            ),
            "delete": _op("Delete the recording's audio", {"204": {"description": "Deleted"}}),
        },
        "/v1/recordings/{recording_id}/download": {"parameters": [recording_id], "get": download},
        "/v1/recording-retention": {
            "get": _op(
                "How many days recordings are kept (null: until deleted)",
                {"200": _json(_obj(["days"], {"days": _NINT}), "The retention")},
            ),
            "put": _op(
                "Keep recordings this many days after they were made",
                {"200": _json(_obj(["days"], {"days": _NINT}), "The retention")},
                body={
                    "type": "object",
                    "required": ["days"],
                    "properties": {
                        "days": {"type": ["integer", "null"], "minimum": 1, "maximum": 3650}
                    },
                    "additionalProperties": False,
                },
            ),
        },
        "/v1/calls/{call_id}": {
            "parameters": [call_id],
            "get": _op("A call's information and recordings", {"200": _json(_ref("Call"), "It")}),
        },
        "/v1/calls/{call_id}/recording": {
            "parameters": [call_id],
            "get": _op(
                "The call's recording and a signed link",
                {"200": _json(_ref("Recording"), "The recording")},
            ),
        },
        "/v1/workflows/{workflow_id}/calls": {
            "parameters": [workflow_id],
            "get": _op(
                "The workflow's calls by callee, case id, task or state",
                {"200": _json(_page_of(_ref("Call")), "A page of calls")},
                params=[
                    phone,
                    _query("case_id", {"type": "string"}, "Case id"),
                    _query("record_id", _UUID, "Task (record)"),
                    _query(
                        "state",
                        {"enum": ["queued", "dialing", "ringing", "answered", "ended"]},
                        "Call state",
                    ),
                    _query("disposition", {"type": "string"}, "Disposition"),
                    *_PAGE,
                ],
            ),
        },
        "/v1/workflows/{workflow_id}/tasks": {
            "parameters": [workflow_id],
            "get": _op(
                "The workflow's tasks (records)",
                {"200": _json(_page_of(_ref("Record")), "A page of tasks")},
                params=[
                    _query(
                        "status",
                        {
                            "enum": [
                                "queued",
                                "in_progress",
                                "waiting",
                                "completed",
                                "cancelled",
                                "dnc",
                                "failed",
                            ]
                        },
                        "Task status",
                    ),
                    phone,
                    _query("case_id", {"type": "string"}, "Case id"),
                    _query("list_id", _UUID, "List"),
                    _query("current_node", {"type": "string"}, "Current node"),
                    *_PAGE,
                ],
            ),
        },
        "/v1/workflows/{workflow_id}/subtasks": {
            "parameters": [workflow_id],
            "get": _op(
                "The workflow's subtasks (node runs)",
                {"200": _json(_page_of(_ref("NodeRun")), "A page of subtasks")},
                params=[
                    _query("task_id", _UUID, "Task (record)"),
                    _query("node_id", {"type": "string"}, "Node id"),
                    _query("node_type", {"type": "string"}, "Node type"),
                    _query(
                        "status",
                        {"enum": ["running", "completed", "failed", "cancelled"]},
                        "Subtask status",
                    ),
                    _query("case_id", {"type": "string"}, "Case id"),
                    phone,
                    *_PAGE,
                ],
            ),
        },
    }


def _dnc_paths() -> dict[str, Any]:
    phone = {"type": "string", "description": "Ten digits (US) or E.164"}
    entry = {
        "type": "object",
        "required": ["phone_e164", "on_list"],
        "properties": {
            "phone_e164": _STR,
            "on_list": {"type": "boolean"},
            "reason": _nullable(_STR),
            "added_at": _nullable(_TIME),
        },
    }
    listed = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": _OBJ},
            "next_after": _nullable(_STR),
        },
    }
    reason = {"type": "string", "maxLength": 500}
    return {
        "/v1/dnc": {
            "post": _op(
                "Put a number on the do-not-call list",
                {"201": _json(entry, "On the list")},
                body={
                    "type": "object",
                    "required": ["phone_number"],
                    "properties": {"phone_number": phone, "reason": reason},
                    "additionalProperties": False,
                },
            ),
            "get": _op(
                "Check a number (?phone=) or list the numbers, paged by number (?after=)",
                {"200": _json({"anyOf": [entry, listed]}, "The check, or a page")},
                params=[
                    _query("phone", phone, "The number to check"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page"),
                    _query("after", _STR, "The next_after of the previous page"),
                ],
            ),
        },
        "/v1/dnc/import": {
            "post": _op(
                "Import up to 10,000 numbers; each accepted or rejected on its own",
                {"200": _json({"type": "object", "required": ["accepted", "errors"]}, "Results")},
                body={
                    "type": "object",
                    "required": ["phone_numbers"],
                    "properties": {
                        "phone_numbers": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 10000,
                            "items": {"description": "A number; an invalid one is rejected alone"},
                        },
                        "reason": reason,
                    },
                },
            )
        },
        "/v1/dnc/{phone}": {
            "parameters": [_path("phone", "The number (ten digits or E.164)")],
            "delete": _op("Take a number off the list", {"204": {"description": "Removed"}}),
        },
    }


def _trunk_paths() -> dict[str, Any]:
    number = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10000}
    count = {"type": ["integer", "null"], "minimum": 1, "maximum": 1000000}
    secret = {"type": ["string", "null"], "minLength": 1, "maxLength": 256}
    fields = {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "uri": {"type": "string", "description": "sip: or sips: URI of the carrier"},
        "outbound_proxy": {"type": ["string", "null"]},
        "username": secret,
        "password": {**secret, "description": "Write-only"},
        "cps": number,
        "max_channels": count,
        "options_interval_s": number,
        "register_expires_s": count,
    }
    trunk = {
        "type": "object",
        "required": ["id", "name", "uri", "has_password"],
        "properties": {
            "id": _UUID,
            "name": _STR,
            "uri": _STR,
            "outbound_proxy": _nullable(_STR),
            "username": _nullable(_STR),
            "has_password": {"type": "boolean"},
            "cps": _nullable({"type": "number"}),
            "max_channels": _nullable({"type": "integer"}),
            "options_interval_s": _nullable({"type": "number"}),
            "register_expires_s": _nullable({"type": "integer"}),
            "created_at": _TIME,
            "updated_at": _TIME,
        },
    }
    trunk_id = _path("trunk_id", "Trunk id")
    return {
        "/v1/trunks": {
            "post": _op(
                "Add a SIP trunk (a workflow dials through it with settings.trunk = its name)",
                {"201": _json(trunk, "Created")},
                body={
                    "type": "object",
                    "required": ["name", "uri"],
                    "properties": fields,
                    "additionalProperties": False,
                },
            ),
            "get": _op(
                "The tenant's trunks (passwords never shown)",
                {"200": _json({"type": "object", "required": ["items"]}, "Trunks")},
            ),
        },
        "/v1/trunks/{trunk_id}": {
            "parameters": [trunk_id],
            "get": _op("A trunk", {"200": _json(trunk, "The trunk")}),
            "patch": _op(
                "Change a trunk; the next call uses the new settings",
                {"200": _json(trunk, "The trunk")},
                body={"type": "object", "properties": fields, "additionalProperties": False},
            ),
            "delete": _op("Remove a trunk", {"204": {"description": "Removed"}}),
        },
    }


def build_openapi(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dialer",
            "version": "0.1.0",
            "description": "Record ingestion, workflows, look-ups, recordings and webhooks.",
        },
        "servers": [{"url": server_url}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
