"""WebSockets for an actor another host owns are proxied to the owner.

Like HTTP requests (``forward.py``): the client keeps one URL. Before it accepts, a
WebSocket route asks :func:`forwarded` whether the actor is served here; on
``NotOwner`` this host opens a WebSocket to the owner's URL **from the lease table**
(never from the request: a client cannot point this host anywhere) — same path and
query, this cluster's bearer token, the client's other subprotocols, and
``x-agentvm-forwarded: <this host>`` — accepts the client with the subprotocol the
owner accepted, then pumps text and binary frames both ways until either side
closes, passing the close code and reason on.

Bounds: the connect has a 5 s deadline; at most ``MAX_QUEUE`` frames of at most
``MAX_FRAME`` bytes wait on the owner's side, and a write to a client that does not
read waits (it is not queued), so a stalled client stalls the owner's sender, whose
own limits (subscriber buffers, terminal credit) apply. A forwarded WebSocket that
meets ``NotOwner`` again closes with 4503 "owner moving" (no loops); an owner that
cannot be reached closes with 4421 and an error frame naming it (the client may
retry or reconnect there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from orchestrator.cluster.forwarding import FORWARDED_HEADER
from orchestrator.errors import NotOwner

log = logging.getLogger("agentvm.server")

CONNECT_TIMEOUT = 5.0
MAX_FRAME = 8 * 1024 * 1024
MAX_QUEUE = 2
CLOSE_MOVING = 4503
CLOSE_UNREACHABLE = 4421
# Request headers that describe this hop, not the client's request.
_DROP = frozenset(
    {
        "host",
        "connection",
        "upgrade",
        "authorization",
        "origin",
        "cookie",
        "content-length",
        FORWARDED_HEADER,
    }
)


async def forwarded(websocket: WebSocket, probe: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``probe`` (the route's resolve) before accepting: ``NotOwner`` → the socket
    is proxied to the owner (or closed with a reason) and ``True`` is returned; any
    other outcome → ``False`` and the route goes on (it reports its own errors)."""
    try:
        await probe()
    except NotOwner as exc:
        await proxy_websocket(websocket, exc)
        return True
    except Exception:
        return False
    return False


async def claim(engine: Any, name: str, key: str, *, create: bool) -> None:
    """The usual probe: resolve the actor and wake it here, which raises ``NotOwner``
    when a live host holds its lease (what the route would do next anyway)."""
    from .common import resolve

    actor_id, _, _ = await resolve(engine, name, key, create=create)
    await engine.instance(actor_id)


def _close_code(code: int | None) -> int:
    """A code that may be sent in a close frame (1005/1006/1015 only describe one)."""
    if code is None or code in (1005,):
        return 1000
    if code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014):
        return code
    if 3000 <= code <= 4999:
        return code
    return 1011


async def _refuse(websocket: WebSocket, exc: NotOwner, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        if websocket.client_state == WebSocketState.CONNECTING:
            await websocket.accept()
        frame = {"type": "error", "error": exc.to_dict()}
        await asyncio.wait_for(websocket.send_text(json.dumps(frame)), CONNECT_TIMEOUT)
        await asyncio.wait_for(websocket.close(code=code, reason=reason[:120]), CONNECT_TIMEOUT)


async def proxy_websocket(websocket: WebSocket, exc: NotOwner) -> None:
    """Proxy a not-yet-accepted ``websocket`` to the owner named by ``exc``."""
    url = exc.metadata.get("owner_url")
    owner = exc.metadata.get("owner_host_id")
    if websocket.headers.get(FORWARDED_HEADER) is not None:
        await _refuse(
            websocket, exc, CLOSE_MOVING, "owner moving: a forwarded socket met another owner"
        )
        return
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        await _refuse(
            websocket, exc, CLOSE_MOVING, f"owner moving: host {owner} has no address yet"
        )
        return
    app = websocket.app
    engine = app.state.engine
    me = engine.cluster.host_id if engine.cluster is not None else ""
    headers = [(k, v) for k, v in websocket.headers.items() if k.lower() not in _DROP]
    headers = [(k, v) for k, v in headers if not k.lower().startswith("sec-websocket-")]
    token = getattr(app.state.settings, "token", None)
    if token:
        # Every host shares the cluster's token; the client's (header or subprotocol,
        # which the auth middleware already removed) was checked against it here.
        headers.append(("authorization", f"Bearer {token}"))
    headers.append((FORWARDED_HEADER, me))
    raw_path = websocket.scope.get("raw_path") or websocket.url.path.encode()
    target = "ws" + url.rstrip("/")[4:] + raw_path.decode("latin-1")
    query = websocket.scope.get("query_string", b"")
    if query:
        target += "?" + query.decode("latin-1")
    offered = [
        Subprotocol(p) for p in websocket.scope.get("subprotocols", ()) if isinstance(p, str)
    ]
    try:
        upstream = await connect(
            target,
            subprotocols=offered or None,
            additional_headers=headers,
            user_agent_header=None,
            compression=None,
            proxy=None,
            open_timeout=CONNECT_TIMEOUT,
            max_size=MAX_FRAME,
            max_queue=MAX_QUEUE,
            close_timeout=CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError, InvalidHandshake) as err:
        log.warning("forwarding WebSocket %s to %s failed: %s", raw_path, url, err)
        actor_id = exc.metadata.get("actor_id")
        if engine.cluster is not None and isinstance(actor_id, str):
            engine.cluster.forget_owner(actor_id)
        await _refuse(
            websocket, exc, CLOSE_UNREACHABLE, f"owner {url} unreachable: reconnect there"
        )
        return
    try:
        await websocket.accept(subprotocol=upstream.subprotocol)
        await _pump(websocket, upstream)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(upstream.close(), CONNECT_TIMEOUT)


async def _pump(websocket: WebSocket, upstream: ClientConnection) -> None:
    """Frames both ways until one side closes; the close is passed to the other."""

    async def down() -> None:
        try:
            async for message in upstream:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
        except ConnectionClosed:
            pass
        rcvd = upstream.protocol.close_rcvd
        code = _close_code(rcvd.code if rcvd is not None else 1011)
        reason = rcvd.reason if rcvd is not None else "owner went away"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code=code, reason=reason), CONNECT_TIMEOUT)

    async def up() -> None:
        while True:
            try:
                message = await websocket.receive()
            except WebSocketDisconnect as disc:
                message = {"type": "websocket.disconnect", "code": disc.code, "reason": ""}
            if message["type"] == "websocket.disconnect":
                code = _close_code(message.get("code"))
                await upstream.close(code=code, reason=message.get("reason") or "")
                return
            try:
                if message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send(message["text"])
            except ConnectionClosed:
                return  # the owner closed: down() passes its close on

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not tasks[0].done() and upstream.protocol.close_rcvd is not None:
            await asyncio.wait([tasks[0]], timeout=CONNECT_TIMEOUT)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
