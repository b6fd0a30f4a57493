"""The plain queue send, served without FastAPI's per-request machinery.

``POST /actors/{name}/{key}/queues/{queue}`` with a body of ``{"body": ...}`` (or
``{}``) and no query string is the hottest route there is: a producer sending work.
Through the router it paid route matching over every route, dependency solving,
a pydantic model for the body, query-parameter parsing and response building: more
than half of the server's CPU per send (profile in docs/http.md). This innermost
middleware answers exactly that request shape with the same code the route runs
(``check_queue``, ``from_wire``, ``resolve``, ``Engine.send``, ``json_response``)
and the same answer; every other request, including any other body shape (``wait``,
``timeout_ms``, extra fields) and any query parameter, goes to the router unchanged.

It sits inside every other middleware, so authentication, the browser guard, the
body limit and the JSON depth check have already run. An exception is answered by
the app's own exception handler for it (as the router's ExceptionMiddleware would,
the cluster's forwarding of ``NotOwner`` included, with the body replayed); one with
no specific handler propagates to the outer middleware as from a route.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from typing import Any

from fastapi.telemetry import TelemetryConfig
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.wire import from_wire

from . import routes_actors
from .common import check_queue, json_response, resolve
from .paths import parse_name

# The route's template over the raw path (RawPathMiddleware): segments without '/'.
_SEND = re.compile(r"/actors/([^/]+)/([^/]+)/queues/([^/]+)")


class QueueSendFastPath:
    """Serve plain queue sends directly; pass everything else to the router."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope.get("query_string")
            or (match := _SEND.fullmatch(scope["path"])) is None
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        try:
            request = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # the router answers it in its own words
            request = None
        if type(request) is not dict or not request.keys() <= {"body"}:
            await self.app(scope, replay, send)  # the router answers (422, wait, ...)
            return
        app = scope["app"]
        if self._route is None:
            self._route = _find_route()
        scope["route"] = self._route  # what the router records (metrics' route label)
        try:
            response = await _send(app.state.engine, match, request.get("body"))
        except Exception as exc:
            handler = _handler_for(app, exc)
            if handler is None:
                raise
            response = handler(Request(scope, replay), exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, replay, send)


async def _send(engine: Any, match: re.Match[str], body: Any) -> Any:
    """What routes_actors.send does for ``{"body": body}`` without ``wait``."""
    name, key, queue = match.groups()
    queue_name = parse_name(queue, "queue")
    check_queue(engine, parse_name(name, "name"), queue_name)
    payload = from_wire(body, where="body")
    actor_id, _, _ = await resolve(engine, name, key, create=True)
    result = await engine.send(actor_id, queue_name, payload, wait=False, timeout=None)
    out: dict[str, object] = {"status": result.status, "message_id": result.message_id}
    if result.status == "completed":
        out["response"] = result.response
    elif result.status == "failed":
        out["error"] = result.error
    return json_response(out)


def _find_route() -> Any:
    """The send route the router would have picked (what it puts in ``scope["route"]``)."""
    for route in routes_actors.router.routes:
        if getattr(route, "endpoint", None) is routes_actors.send:
            return route
    return None


def _handler_for(app: Any, exc: Exception) -> Any:
    """The app's handler for ``exc`` by class, as Starlette's ExceptionMiddleware finds
    it; ``None`` when only the catch-all for ``Exception`` would answer."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


# The standard ways to turn OpenTelemetry on (FastAPI's own switch, the OTel SDK's).
_OTEL_ENV = ("FASTAPI_OTEL_AUTO_CONFIGURE", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT")


def fastapi_telemetry() -> TelemetryConfig | None:
    """FastAPI's native OpenTelemetry hooks look for configured providers on every
    request (~20 µs of CPU per request measured here, a tenth of a queue send).
    agentvm's own metrics are Prometheus (``/metrics``): the hooks stay off unless
    the environment asks for OpenTelemetry."""
    if any(os.environ.get(name) for name in _OTEL_ENV):
        return None  # FastAPI's defaults
    return {"tracing": False, "metrics": False, "logs": False}
