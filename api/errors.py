"""API errors: every failure answers JSON that names the field and the reason.

Handlers raise :class:`ApiError`; the middleware turns it, aiohttp's own
HTTP errors (404 for an unknown route, 405, 413 for an oversized body) and
anything unexpected into the same JSON shape. An unexpected exception is
logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dialer import jsonutil

__all__ = ["ApiError", "error_middleware", "json_response"]

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    500: "internal_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or _CODES.get(status, "error")
        self.problems = problems

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.problems:
            error["problems"] = self.problems
        return {"status": "error", "error": error}


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=jsonutil.dumps_bytes(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: "no such route",
            405: f"method {request.method} is not allowed here",
            413: "the request body is too large",
        }.get(exc.status, exc.reason)
        field = "body" if exc.status == 413 else None
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        error = ApiError(exc.status, message, field=field)
        return json_response(error.body(), status=exc.status, headers=headers)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return json_response(ApiError(500, "internal error").body(), status=500)
