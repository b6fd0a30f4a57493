"""Every error the server returns has one shape:
``{"error": {"group", "code", "message", "metadata"}}`` (see :class:`ErrorBody`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from orchestrator.errors import AgentVMError

log = logging.getLogger("agentvm.server")

_HTTP_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "route_not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_body(group: str, code: str, message: str, **metadata: Any) -> dict[str, Any]:
    return {"error": {"group": group, "code": code, "message": message, "metadata": metadata}}


def error_response(
    status: int,
    group: str,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    **metadata: Any,
) -> Response:
    body = json.dumps(error_body(group, code, message, **metadata), default=repr)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def agentvm_error_response(exc: AgentVMError) -> Response:
    status = exc.http_status if 400 <= exc.http_status <= 599 else 500
    return Response(
        json.dumps({"error": exc.to_dict()}, default=repr),
        status_code=status,
        media_type="application/json",
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_response(exc: RequestValidationError) -> Response:
    """FastAPI/pydantic validation errors → 400 naming the offending field."""
    errors = [
        {"field": _loc(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "request", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(400, "request", "invalid", message, field=first["field"], errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    async def on_agentvm(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AgentVMError)
        if exc.http_status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return agentvm_error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, "request", code, detail, headers=headers)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(
            500, "server", "internal", f"internal error: {type(exc).__name__}: {exc}"
        )

    app.add_exception_handler(AgentVMError, on_agentvm)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
