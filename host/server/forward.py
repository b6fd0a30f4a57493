"""Requests for an actor another host owns are forwarded there (orchestrator/cluster).

Forwarded, not redirected: clients keep one URL (no second hop, no redirect of a
POST body, no CORS between hosts), and SSE streams are streamed through. The
``NotOwner`` exception handler proxies the request to the owner's URL — method, raw
path, query, body, the bearer token — with ``x-agentvm-forwarded: <this host>``;
the response (status, headers, streamed body) comes back as is. A forwarded request
that meets ``NotOwner`` again is not forwarded twice: ``503 cluster/owner_moving``
with ``Retry-After: 1``. WebSockets are proxied too (``forward_ws.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request, WebSocket
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketState

from orchestrator.cluster import OwnerMoving
from orchestrator.cluster.context import FORWARDED, HTTP, reset_origin, set_origin
from orchestrator.cluster.forwarding import FORWARDED_HEADER
from orchestrator.errors import NotOwner

from .errors import agentvm_error_response
from .forward_ws import proxy_websocket

log = logging.getLogger("agentvm.server")

_FORWARDED_BYTES = FORWARDED_HEADER.encode()
# Not passed on: hop-by-hop headers, the ones httpx sets for the new hop, and the
# browser's cross-site labels (this host's guard already checked them; the owner
# would see another host's origin).
_DROP_REQUEST = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "origin",
        "referer",
        "sec-fetch-site",
        "sec-fetch-mode",
        "sec-fetch-dest",
        FORWARDED_HEADER,
    }
)
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})


class ClusterOriginMiddleware:
    """Marks the request's context: a client's request (new actors are placed on the
    least-loaded host) or one another host forwarded (served here, never again
    forwarded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        forwarded = any(k == _FORWARDED_BYTES for k, _ in scope.get("headers", ()))
        token = set_origin(FORWARDED if forwarded else HTTP)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_origin(token)


def moving(exc: NotOwner, why: str) -> Response:
    err = OwnerMoving(
        f"actor is changing hosts ({why}); retry in a second",
        actor_id=exc.metadata.get("actor_id"),
        owner_host_id=exc.metadata.get("owner_host_id"),
    )
    resp = agentvm_error_response(err)
    resp.headers["Retry-After"] = "1"
    return resp


def _client(app: Any) -> httpx.AsyncClient:
    client: httpx.AsyncClient | None = getattr(app.state, "cluster_http", None)
    if client is None:
        # Every hop has deadlines. Between two bytes of an answer: the longest a send
        # may wait (the owner answers then), with a margin; event streams ping every 15 s.
        read = app.state.settings.max_wait_ms / 1000 + 60.0
        timeout = httpx.Timeout(connect=5.0, read=read, write=60.0, pool=30.0)
        # Keep as many connections alive as may be open: a busy owner gets many
        # forwarded requests at once (httpx keeps 20 by default, then reconnects).
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        client = httpx.AsyncClient(timeout=timeout, limits=limits)
        app.state.cluster_http = client
    return client


async def forward(request: Request, exc: NotOwner) -> Response:
    """Proxy ``request`` to the owner named by ``exc``."""
    url = exc.metadata.get("owner_url")
    if request.headers.get(FORWARDED_HEADER) is not None:
        return moving(exc, "a forwarded request met another owner")
    if not url:
        return moving(exc, f"host {exc.metadata.get('owner_host_id')} has no address yet")
    # A JSON body the route parsed is cached; an upload the route has not read yet is
    # streamed through (never buffered whole); one it began reading cannot be replayed.
    body: Any = getattr(request, "_body", None)
    if body is None:
        if getattr(request, "_stream_consumed", False):
            return moving(exc, "the request body was already consumed")
        body = request.stream()
    engine = request.app.state.engine
    me = engine.cluster.host_id if engine.cluster is not None else ""
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST]
    headers.append((FORWARDED_HEADER, me))
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    target = url.rstrip("/") + raw_path.decode("latin-1")
    query = request.scope.get("query_string", b"")
    if query:
        target += "?" + query.decode("latin-1")
    client = _client(request.app)
    req = client.build_request(request.method, target, headers=headers, content=body)
    try:
        resp = await client.send(req, stream=True)
    except httpx.TransportError as err:
        log.warning("forwarding %s %s to %s failed: %s", request.method, raw_path, url, err)
        actor_id = exc.metadata.get("actor_id")
        if engine.cluster is not None and isinstance(actor_id, str):
            engine.cluster.forget_owner(actor_id)
        return moving(exc, f"host {exc.metadata.get('owner_host_id')} did not answer")

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            pass  # the owner went away mid-stream: the client sees the stream end
        finally:
            await resp.aclose()

    out_headers = {k: v for k, v in resp.headers.multi_items() if k.lower() not in _DROP_RESPONSE}
    return StreamingResponse(stream(), status_code=resp.status_code, headers=out_headers)


async def _on_not_owner(conn: Any, exc: Exception) -> Response | None:
    assert isinstance(exc, NotOwner)
    if isinstance(conn, WebSocket):
        if conn.client_state == WebSocketState.CONNECTING:
            await proxy_websocket(conn, exc)
            return None
        url = exc.metadata.get("owner_url")
        with contextlib.suppress(Exception):
            await conn.accept()
            await conn.close(code=4421, reason=f"actor owned by another host: {url}"[:120])
        return None
    return await forward(conn, exc)


def install_forwarding(app: FastAPI) -> None:
    """Register the ``NotOwner`` handler (it proxies; its HTTP client lives as long
    as the process)."""
    app.add_exception_handler(NotOwner, _on_not_owner)  # type: ignore[arg-type]
