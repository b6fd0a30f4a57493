"""ACP's JSON-RPC 2.0 over stdio (one JSON object per line each way), with the
standard library only.

The agent used the ``acp`` SDK for this; its pydantic schema alone is ~0.5 s of
imports and ~30 MiB that a pre-started agent would hold for nothing, and loading
it on the first prompt made every session's first turn wait (issue 13). What the
agent needs of the protocol is small: requests dispatched to handlers (each in its
own task, so ``session/cancel`` reaches a running ``session/prompt``), results and
errors sent back, notifications out (``session/update``) and requests out
(``session/request_permission``) whose answers are matched by id. The JSON shapes
are ACP's (camelCase, ``_meta``); tests/agent drives this with the real ``acp``
client, which validates every message against its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("coding_agent")

# The longest JSON-RPC line read from stdin (acp's default limit).
STDIO_LIMIT = 50 * 2**20

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class RequestError(Exception):
    """A JSON-RPC error answer (the codes acp's ``RequestError`` uses)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data

    @classmethod
    def invalid_request(cls, data: Any = None) -> RequestError:
        return cls(-32600, "Invalid request", data)

    @classmethod
    def method_not_found(cls, method: str) -> RequestError:
        return cls(-32601, "Method not found", {"method": method})

    @classmethod
    def invalid_params(cls, data: Any = None) -> RequestError:
        return cls(-32602, "Invalid params", data)

    @classmethod
    def internal_error(cls, data: Any = None) -> RequestError:
        return cls(-32603, "Internal error", data)

    def error_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.data is not None:
            out["data"] = self.data
        return out


class _Out(asyncio.BaseProtocol):
    """stdout's write-pipe protocol, with the flow control StreamWriter.drain needs."""

    def __init__(self) -> None:
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # a waiting drain ends; the next write fails

    async def _drain_helper(self) -> None:
        if self._paused:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class Connection:
    """One JSON-RPC peer: serve its requests with ``handlers`` (method -> coroutine
    taking the params; notifications too, their result dropped)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handlers: dict[str, Handler],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handlers = handlers
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Until the peer closes its end (or sends a line over the limit)."""
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except ValueError:
                    log.error("a JSON-RPC line over %d bytes: closing", STDIO_LIMIT)
                    return
                if not line:
                    return
                if line.strip():
                    self._dispatch(line)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the client closed the connection"))
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            self._spawn(self._send({"jsonrpc": "2.0", "id": None, "error": _PARSE_ERROR}))
            return
        if not isinstance(msg, dict):
            return
        method = msg.get("method")
        if isinstance(method, str):
            self._spawn(self._handle(msg, method))
        elif "id" in msg:  # the answer to one of our requests
            future = self._pending.pop(msg["id"], None) if isinstance(msg["id"], int) else None
            if future is None or future.done():
                return
            if isinstance(msg.get("error"), dict):
                err = msg["error"]
                future.set_exception(
                    RequestError(
                        int(err.get("code", -32603)), str(err.get("message")), err.get("data")
                    )
                )
            else:
                future.set_result(msg.get("result"))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: dict[str, Any], method: str) -> None:
        rid = msg.get("id")
        is_request = "id" in msg
        params = msg.get("params")
        params = params if params is not None else {}
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        try:
            handler = self._handlers.get(method)
            if handler is None:
                if not is_request:
                    return  # an unknown notification is ignored
                raise RequestError.method_not_found(method)
            if not isinstance(params, dict):
                raise RequestError.invalid_params({"params": "must be an object"})
            result = await handler(params)
            reply["result"] = {} if result is None else result
        except RequestError as exc:
            reply["error"] = exc.error_obj()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s failed", method)
            reply["error"] = RequestError.internal_error({"details": repr(exc)}).error_obj()
        if is_request:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(reply)

    async def _send(self, msg: dict[str, Any]) -> None:
        self._writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        await self._writer.drain()

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Ask the client; its result (a :class:`RequestError` if it answered one)."""
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            return await future
        finally:
            self._pending.pop(rid, None)


_PARSE_ERROR = {"code": -32700, "message": "Parse error"}


async def stdio() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """This process's stdin and stdout as asyncio streams."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STDIO_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, proto = await loop.connect_write_pipe(_Out, sys.stdout)
    return reader, asyncio.StreamWriter(transport, proto, None, loop)
