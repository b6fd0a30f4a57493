"""Pure ASGI middleware: bearer-token auth, request body limits and request timing."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.metrics import REGISTRY

from .errors import error_body
from .preview import capability_ok, is_preview_path

log = logging.getLogger("agentvm.server")

HTTP_SECONDS = REGISTRY.histogram(
    "agentvm_http_request_seconds", "HTTP request latency, by method, route and status."
)

UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/ui"})
# The console's static files (routes_ui.py) hold no secret; its pages send the token.
UNAUTHENTICATED_PREFIXES = ("/ui/",)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[Any], *, websocket: bool = False
) -> None:
    """Send a whole JSON response (``websocket``: as the denial of a WebSocket handshake)."""
    data = json.dumps(body).encode()
    prefix = "websocket.http" if websocket else "http"
    await send(
        {
            "type": f"{prefix}.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": f"{prefix}.response.body", "body": data})


WS_TOKEN_PREFIX = "agentvm.bearer."
WS_PROTOCOL = "agentvm"


def _answer_protocol(scope: Scope, send: Send) -> Send:
    """The browser fails a handshake whose answer names none of the offered
    subprotocols: a route that accepts without one answers ``agentvm``."""
    if WS_PROTOCOL not in scope.get("subprotocols", ()):
        return send

    async def wrapped(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": WS_PROTOCOL}
        await send(message)

    return wrapped


class BearerAuthMiddleware:
    """Every request but ``/healthz`` needs ``Authorization: Bearer <token>``.

    A refused HTTP request gets 401 in the error shape; a refused WebSocket is
    closed before it is accepted (the client sees HTTP 403)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False

    def _ws_protocol_token(self, scope: Scope) -> Scope | None:
        """A browser cannot set headers on a WebSocket: the console offers the token
        as the subprotocol ``agentvm.bearer.<base64url token>`` beside ``agentvm``
        (as Kubernetes does). Right → the scope without it (the app, a preview proxy
        included, never sees the token); absent or wrong → ``None``."""
        if scope["type"] != "websocket":
            return None
        offered = [p for p in scope.get("subprotocols", ()) if isinstance(p, str)]
        given = [p for p in offered if p.startswith(WS_TOKEN_PREFIX)]
        if len(given) != 1:
            return None
        try:
            raw = base64.urlsafe_b64decode(given[0][len(WS_TOKEN_PREFIX) :] + "==")
        except ValueError:
            return None
        if not hmac.compare_digest(b"Bearer " + raw, self.expected):
            return None
        kept = [p for p in offered if p != given[0]]
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"sec-websocket-protocol"]
        if kept:
            headers.append((b"sec-websocket-protocol", ", ".join(kept).encode("latin-1")))
        return {**scope, "subprotocols": kept, "headers": headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = scope.get("path", "")
        if (
            kind not in ("http", "websocket")
            or path in UNAUTHENTICATED_PATHS
            or (kind == "http" and path.startswith(UNAUTHENTICATED_PREFIXES))
        ):
            await self.app(scope, receive, send)
            return
        if self._authorized(scope) or capability_ok(scope):  # a preview link (preview.py)
            await self.app(scope, receive, send)
            return
        ws_scope = self._ws_protocol_token(scope)
        if ws_scope is not None:
            await self.app(ws_scope, receive, _answer_protocol(ws_scope, send))
            return
        if kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        body = error_body(
            "auth",
            "unauthorized",
            "missing or wrong bearer token (send 'Authorization: Bearer <AGENTVM_TOKEN>')",
        )
        await send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])


class BodyTooLarge(HTTPException):
    """Raised while reading a streamed body past the limit; the error handlers turn
    it into the 413 error shape (FastAPI re-raises HTTP exceptions from body parsing)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            413, f"request body of over {size} bytes exceeds the limit of {limit} bytes"
        )


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_body`` bytes (``max_upload`` for file uploads)
    with 413, by ``Content-Length`` up front or by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"] == "/blobs":
            # Blob uploads are bounded by the blob store (AGENTVM_MAX_BLOB, streamed
            # to disk, never held in memory), not by the JSON or file-upload limits.
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "PUT" and scope["path"].startswith("/vms/")
        upload = upload or is_preview_path(scope["path"])  # streamed to the sandbox
        limit = self.max_upload if upload else self.max_body
        declared: int | None = None
        chunked = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    chunked = True  # unparsable: count what arrives
                    continue
                if length > limit:
                    await send_json(send, 413, _too_large(length, limit), [])
                    return
                declared = length
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared >= 0 and not chunked:
            # The server's parser delivers exactly Content-Length bytes (any more are
            # the next request): nothing to count, so no wrapper around every receive
            # and send of the request.
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(seen, limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await send_json(send, 413, _too_large(seen, limit), [])


def _too_large(size: int, limit: int) -> dict[str, Any]:
    return error_body(
        "request",
        "body_too_large",
        f"request body of {size} bytes exceeds the limit of {limit} bytes",
        size=size,
        limit=limit,
    )


class TimingMiddleware:
    """Observe every HTTP request's latency by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            HTTP_SECONDS.observe(
                time.perf_counter() - started,
                method=scope["method"],
                route=path,
                status=str(status),
            )


class UnexpectedErrorMiddleware:
    """A server fault becomes a 500 in the error shape *without* re-raising.

    Starlette's outermost error middleware re-raises after answering, which makes
    uvicorn drop the keep-alive connection, so the client's next request on it fails
    with a transport error. Caught here, the connection stays usable."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error", exc_info=exc)
            body = error_body("server", "internal", f"internal error: {type(exc).__name__}: {exc}")
            await send_json(send, 500, body, [])
