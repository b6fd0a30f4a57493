"""``WS /vms/{key}/pty``: a terminal in a vm over a WebSocket.

Query: ``terminal=<id>`` re-attaches to a running terminal (its scroll-back is
replayed first); without it a new one is opened (``open_terminal``). ``cols`` and
``rows`` size it; ``cwd`` is where a new one starts. Frames: binary = terminal bytes
both ways; text = JSON control. The server's first frame is
``{"type": "attached", "terminal", "cols", "rows"}``; the client may send
``{"type": "resize", "cols", "rows"}``. When the shell exits the server sends
``{"type": "exit", "terminal", "exit_code"}``; when a newer attachment takes the
terminal over, ``{"type": "detached", "terminal", "reason": "replaced"}``; then it
closes (1000). Errors are ``{"type": "error", "error": {...}}``: a bad first request
then closes with 4000 + HTTP status (4400, 4404, ...); a bad control frame does not.

Closing the socket detaches: the terminal keeps running in the sandbox until it is
closed (``close_terminal``), exits, or stays detached for
``AGENTVM_TERMINAL_IDLE_TIMEOUT`` seconds. Auth and the browser guard are the same
middleware as every route (bearer token, Host and Origin checks).

Memory: the host holds one attachment's channel window (4 MiB) at most; a client
that stops reading blocks the socket's writes, which stops the pump and, through
the supervisor's credit, the program in the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from host.sandbox import pty
from host.vm.manager import manager_of
from orchestrator.errors import AgentVMError, InvalidRequest

from .common import resolve
from .forward_ws import claim, forwarded

router = APIRouter(tags=["vms"])

VM = "vm"
MAX_DIMENSION = 1000
QUERY = frozenset({"terminal", "cols", "rows", "cwd"})
# A control frame is a small JSON object; anything bigger is refused unparsed.
MAX_CONTROL = 4096
# How long the farewell frames to a client may take (it may not be reading).
CLOSE_TIMEOUT = 5.0
TOUCH_TIMEOUT = 10.0
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dimension(value: Any, field: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIMENSION:
        raise InvalidRequest(
            f"{field} must be an integer between 1 and {MAX_DIMENSION}", field=field
        )
    return value


def _query(websocket: WebSocket) -> dict[str, Any]:
    params = websocket.query_params
    for name in params:
        if name not in QUERY:
            raise InvalidRequest(
                f"unknown query parameter {name!r} (this route takes: {', '.join(sorted(QUERY))})",
                field=f"query.{name}",
            )
    out: dict[str, Any] = {}
    for name in ("cols", "rows"):
        if name in params:
            out[name] = _dimension(params[name], name)
    terminal = params.get("terminal")
    if terminal is not None:
        if not terminal or len(terminal) > 64:
            raise InvalidRequest("terminal must be a terminal id", field="terminal")
        out["terminal"] = terminal
    if params.get("cwd"):
        out["cwd"] = params["cwd"]
    return out


class _Socket:
    """Sends on one WebSocket from two tasks, one frame at a time."""

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket
        self.lock = asyncio.Lock()

    async def json(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_text(_dumps(frame))

    async def bytes(self, data: bytes) -> None:
        async with self.lock:
            await self.ws.send_bytes(data)

    async def error(self, exc: AgentVMError, *, close: bool) -> None:
        async def farewell() -> None:
            await self.json({"type": "error", "error": exc.to_dict()})
            if close:
                await self.ws.close(code=4000 + exc.http_status)

        with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect):
            await asyncio.wait_for(farewell(), CLOSE_TIMEOUT)


async def _output(sock: _Socket, stream: pty.TerminalStream) -> None:
    async for chunk in stream.output():
        await sock.bytes(chunk)  # waits while the client's socket is full
    end = stream.end
    if end is None:
        return
    if end.exit_code is not None:
        frame: dict[str, Any] = {"type": "exit", "terminal": end.id, "exit_code": end.exit_code}
    else:
        frame = {"type": "detached", "terminal": end.id, "reason": end.reason}
    with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await sock.json(frame)
            await sock.ws.close(code=1000)


async def _input(sock: _Socket, stream: pty.TerminalStream) -> None:
    while True:
        message = await sock.ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data:
            await stream.write(data)
            continue
        text = message.get("text")
        if text is None:
            continue
        try:
            await _control(stream, text)
        except AgentVMError as exc:
            await sock.error(exc, close=False)


async def _control(stream: pty.TerminalStream, text: str) -> None:
    if len(text) > MAX_CONTROL:
        raise InvalidRequest(f"a control frame is at most {MAX_CONTROL} bytes", field="frame")
    try:
        frame = json.loads(text)
    except ValueError:
        raise InvalidRequest("a text frame must be a JSON object", field="frame") from None
    if not isinstance(frame, dict) or frame.get("type") != "resize":
        raise InvalidRequest('unknown control frame (expected {"type": "resize"})', field="type")
    await stream.resize(
        _dimension(frame.get("cols"), "cols"), _dimension(frame.get("rows"), "rows")
    )


@router.websocket("/vms/{key}/pty")
async def terminal_socket(websocket: WebSocket, key: str) -> None:
    engine = websocket.app.state.engine
    create = websocket.query_params.get("terminal") is None
    if await forwarded(websocket, lambda: claim(engine, VM, key, create=create)):
        return  # another host owns the vm: proxied there
    await websocket.accept()
    sock = _Socket(websocket)
    try:
        query = _query(websocket)
        terminal = query.get("terminal")
        actor_id, _, actor_key = await resolve(engine, VM, key, create=terminal is None)
        manager = manager_of(engine)
        if manager is None:
            raise InvalidRequest("this server's vm actor has no sandboxes", field="key")
        async with manager.sandbox_for(engine, list(actor_key)) as sandbox:
            if terminal is None:
                opts = {k: query[k] for k in ("cols", "rows", "cwd") if k in query}
                opened = await engine.call(actor_id, "open_terminal", [opts])
                terminal = str(opened["id"])
            stream = await pty.attach_terminal(
                sandbox, terminal, cols=query.get("cols"), rows=query.get("rows")
            )
            try:
                await sock.json(
                    {
                        "type": "attached",
                        "terminal": stream.id,
                        "cols": stream.cols,
                        "rows": stream.rows,
                    }
                )
                await _run(sock, stream)
            finally:
                await stream.detach()
                # A @used action: the vm's idle timeout counts from this detach, so
                # the container (and the terminal) is still there after a reload.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(TOUCH_TIMEOUT):
                        await engine.call(actor_id, "list_terminals", [])
    except AgentVMError as exc:
        await sock.error(exc, close=True)
    except WebSocketDisconnect:
        pass


async def _run(sock: _Socket, stream: pty.TerminalStream) -> None:
    tasks = [
        asyncio.create_task(_output(sock, stream)),
        asyncio.create_task(_input(sock, stream)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    for task in done:
        exc = task.exception()
        if isinstance(exc, AgentVMError):
            raise exc
