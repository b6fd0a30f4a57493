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

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from orchestrator import Engine, Subscription
from orchestrator.errors import AgentVMError, SubscriberTooSlow
from orchestrator.wire import to_wire

from .common import ERRORS, engine_of, reject_unknown_query, resolve, settings_of
from .forward_ws import claim, forwarded
from .settings import ServerSettings

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


class SseResponse(Response):
    """A ``text/event-stream`` response written by ``_pump`` until it returns or the
    client leaves (``http.disconnect`` is watched even while nothing is written);
    ``_closed`` then runs, whatever happened."""

    media_type = "text/event-stream"

    def __init__(self) -> None:
        # Not Response.__init__: that would declare a Content-Length of the empty body.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            pump = asyncio.create_task(self._pump(send))
            watch = asyncio.create_task(_until_disconnect(receive))
            try:
                await asyncio.wait([pump, watch], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, watch):
                    task.cancel()
                for task in (pump, watch):
                    with contextlib.suppress(BaseException):
                        await task
        finally:
            await self._closed()

    async def _pump(self, send: Send) -> None:
        raise NotImplementedError

    async def _closed(self) -> None:
        pass


class EventStreamResponse(SseResponse):
    """``text/event-stream`` of one subscription.

    Unlike a plain ``StreamingResponse`` it always ends the subscription when the
    client leaves (watching for ``http.disconnect`` even while no event comes), and
    when the subscriber is dropped as too slow it sends a final ``event: error``
    (written within ``write_timeout`` seconds, else the connection is closed)."""

    def __init__(self, sub: Subscription, actor_id: str, write_timeout: float) -> None:
        super().__init__()
        self.sub = sub
        self.actor_id = actor_id
        self.write_timeout = write_timeout

    async def _closed(self) -> None:
        await self.sub.close()

    async def _pump(self, send: Send) -> None:
        async def chunk(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        await chunk(f": connected {self.actor_id}\n\n".encode())
        while True:
            try:
                ev = await self.sub.next(timeout=PING_SECONDS)
            except TimeoutError:
                await chunk(b": ping\n\n")
                continue
            except StopAsyncIteration:
                await chunk(b"", more=False)
                return
            except SubscriberTooSlow as exc:
                # The reader is stalled, so this write may never finish: bound it. On
                # timeout the response is left incomplete and uvicorn closes the socket.
                error = _sse("error", {"error": exc.to_dict()})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(chunk(error, more=False), self.write_timeout)
                return
            await chunk(_sse(ev.name, ev.payload))


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/actors/{name}/{key}/events",
    summary="Server-sent events of the actor's broadcasts",
    response_class=EventStreamResponse,
    status_code=200,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def events(
    request: Request,
    name: str,
    key: str,
    events: list[str] | None = Query(None, description=EVENTS_DOC),
    create: bool = Query(True, description=CREATE_DOC),
) -> EventStreamResponse:
    engine = engine_of(request)
    settings = settings_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=create)
    sub = await _subscribe(engine, actor_id, events, settings)
    return EventStreamResponse(sub, actor_id, settings.subscriber_write_timeout_s)


async def _subscribe(
    engine: Engine, actor_id: str, events: list[str] | None, settings: ServerSettings
) -> Subscription:
    return await engine.subscribe(
        actor_id,
        _filter(events),
        max_bytes=settings.subscriber_max_bytes,
        max_events=settings.subscriber_max_events,
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
    settings: ServerSettings = websocket.app.state.settings
    if await forwarded(websocket, lambda: claim(engine, name, key, create=create)):
        return  # another host owns the actor: proxied there
    await websocket.accept()
    try:
        actor_id, _, _ = await resolve(engine, name, key, create=create)
        sub = await _subscribe(engine, actor_id, events, settings)
    except AgentVMError as exc:
        await websocket.send_text(_dumps({"type": "error", "error": exc.to_dict()}))
        await websocket.close(code=4000 + exc.http_status)
        return
    await websocket.send_text(_dumps({"type": "connected", "actor_id": actor_id}))

    async def pump() -> None:
        try:
            async for ev in sub:
                frame = {"type": "event", "event": ev.name, "payload": to_wire(ev.payload)}
                await websocket.send_text(_dumps(frame))
        except SubscriberTooSlow as exc:
            error = exc

            # The reader is stalled: bound the final writes, then let the socket go.
            async def farewell() -> None:
                await websocket.send_text(_dumps({"type": "error", "error": error.to_dict()}))
                await websocket.close(code=4000 + error.http_status)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(farewell(), settings.subscriber_write_timeout_s)
            return
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
