"""Broadcasts: server-sent events at ``.../events`` and a WebSocket at ``.../connect``.

SSE: each broadcast is ``event: <name>`` + ``data: <JSON payload>``; a ``: ping``
comment every 15 s keeps proxies from closing the stream. WebSocket: the server
first sends ``{"type": "connected", "actor_id"}``, then one
``{"type": "event", "event": <name>, "payload": ...}`` text frame per broadcast; an
error is ``{"type": "error", "error": {...}}`` followed by close code 4000 + HTTP
status (e.g. 4404). Either way the actor stays awake while someone listens, and the
stream ends when the actor is destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from starlette.responses import StreamingResponse

from orchestrator import Subscription
from orchestrator.errors import AgentVMError
from orchestrator.wire import to_wire

from .common import ERRORS, engine_of, reject_unknown_query, resolve

router = APIRouter(tags=["events"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])

PING_SECONDS = 15.0
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode

EVENTS_DOC = "only these broadcast names (comma-separated or repeated)"
CREATE_DOC = "create the actor if it does not exist (get-or-create); false: 404 instead"


def _filter(events: list[str] | None) -> list[str] | None:
    if not events:
        return None
    names = [n for item in events for n in item.split(",") if n]
    return names or None


def _sse(name: str, payload: object) -> bytes:
    safe = name.replace("\r", " ").replace("\n", " ")
    return f"event: {safe}\ndata: {_dumps(to_wire(payload))}\n\n".encode()


async def _stream(sub: Subscription, actor_id: str) -> AsyncIterator[bytes]:
    try:
        yield f": connected {actor_id}\n\n".encode()
        while True:
            try:
                ev = await sub.next(timeout=PING_SECONDS)
            except TimeoutError:
                yield b": ping\n\n"
                continue
            except StopAsyncIteration:
                return
            yield _sse(ev.name, ev.payload)
    finally:
        await sub.close()


@router.get(
    "/actors/{name}/{key}/events",
    summary="Server-sent events of the actor's broadcasts",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def events(
    request: Request,
    name: str,
    key: str,
    events: list[str] | None = Query(None, description=EVENTS_DOC),
    create: bool = Query(True, description=CREATE_DOC),
) -> StreamingResponse:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=create)
    sub = await engine.subscribe(actor_id, _filter(events))
    return StreamingResponse(
        _stream(sub, actor_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/actors/{name}/{key}/connect")
async def connect(
    websocket: WebSocket,
    name: str,
    key: str,
    events: list[str] | None = Query(None),
    create: bool = Query(True),
) -> None:
    engine = websocket.app.state.engine
    await websocket.accept()
    try:
        actor_id, _, _ = await resolve(engine, name, key, create=create)
        sub = await engine.subscribe(actor_id, _filter(events))
    except AgentVMError as exc:
        await websocket.send_text(_dumps({"type": "error", "error": exc.to_dict()}))
        await websocket.close(code=4000 + exc.http_status)
        return
    await websocket.send_text(_dumps({"type": "connected", "actor_id": actor_id}))

    async def pump() -> None:
        async for ev in sub:
            frame = {"type": "event", "event": ev.name, "payload": to_wire(ev.payload)}
            await websocket.send_text(_dumps(frame))
        await websocket.close(code=1000)

    async def drain() -> None:
        # Client frames are ignored; this notices when the client goes away.
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    tasks = [asyncio.create_task(pump()), asyncio.create_task(drain())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        await sub.close()
