"""One connection to the host: frame dispatch, channels, credit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import protocol as P
from .errors import OpError, from_os_error
from .flow import RecvWindow, SendWindow
from .tasks import background

log = logging.getLogger("agentvm.supervisor")

# (value, payload) returned by an operation.
Reply = tuple[Any, bytes]
Handler = Callable[["Link", "Channel", dict[str, Any], bytes], Awaitable[Reply]]


class Channel:
    """One call in flight: its credit and the data the host streams to it."""

    def __init__(self, link: Link, ch: int) -> None:
        self.link = link
        self.id = ch
        self.send_window = SendWindow()
        self.recv_window = RecvWindow()
        # (stream, bytes) from DATA frames; (stream, None) on EOF; (None, None) on close.
        self.inbox: asyncio.Queue[tuple[str | None, bytes | None]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def send_data(self, stream: str, data: bytes) -> None:
        """Send data frames, waiting for credit; ConnectionError if the host is gone."""
        view = memoryview(data)
        for start in range(0, len(view), P.CHUNK):
            piece = view[start : start + P.CHUNK]
            await self.send_window.acquire(len(piece))
            await self.link.send({"t": P.DATA, "ch": self.id, "s": stream}, piece)

    async def send_event(self, kind: str, **fields: Any) -> None:
        await self.link.send({"t": P.EVENT, "ch": self.id, "kind": kind, **fields})

    async def recv(self) -> tuple[str | None, bytes | None]:
        """Next host data chunk; returns credit for it as it is consumed."""
        stream, data = await self.inbox.get()
        if data:
            grant = self.recv_window.consumed(len(data))
            if grant:
                await self.link.send({"t": P.CREDIT, "ch": self.id, "n": grant})
        return stream, data


class Link:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handlers: dict[str, Handler],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handlers = handlers
        self.channels: dict[int, Channel] = {}
        self.closed = False

    async def send(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        if self.closed:
            raise ConnectionError("link to host closed")
        self.writer.write(P.encode(header, payload))
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self.closed = True
            raise ConnectionError("link to host closed") from exc

    async def run(self) -> None:
        """Serve frames until the host goes away."""
        try:
            while True:
                frame = await P.read_frame(self.reader)
                if frame is None:
                    return
                self._dispatch(*frame)
        except (P.ProtocolError, ConnectionError, OSError) as exc:
            log.warning("link ended: %s", exc)
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True
        for channel in list(self.channels.values()):
            channel.send_window.close()
            channel.inbox.put_nowait((None, None))
            if channel.task is not None:
                channel.task.cancel()
        self.channels.clear()
        self.writer.close()

    def _dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        kind, ch = header["t"], header.get("ch", 0)
        if kind == P.CALL:
            if ch in self.channels or ch <= 0:
                raise P.ProtocolError(f"channel {ch} reused or invalid")
            channel = Channel(self, ch)
            self.channels[ch] = channel
            channel.task = asyncio.create_task(self._serve(channel, header, payload))
            return
        if kind == P.PING:
            background(self._safe_send({"t": P.PONG, "ch": 0, "id": header.get("id")}))
            return
        channel_or_none = self.channels.get(ch)
        if channel_or_none is None:
            return  # late frame for a finished channel
        if kind == P.DATA:
            channel_or_none.inbox.put_nowait((str(header.get("s", "")), payload))
        elif kind == P.EOF:
            channel_or_none.inbox.put_nowait((str(header.get("s", "")), None))
        elif kind == P.EVENT:
            # host -> supervisor: e.g. "tracked" (a gated exec child may run).
            channel_or_none.inbox.put_nowait((str(header.get("kind", "")), b""))
        elif kind == P.CREDIT:
            channel_or_none.send_window.grant(int(header.get("n", 0)))
        elif kind == P.CANCEL and channel_or_none.task is not None:
            channel_or_none.task.cancel()

    async def _safe_send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        try:
            await self.send(header, payload)
        except ConnectionError:
            pass

    async def _serve(self, channel: Channel, header: dict[str, Any], payload: bytes) -> None:
        op = header.get("op")
        args = header.get("args") or {}
        result: dict[str, Any]
        body = b""
        try:
            handler = self.handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                raise OpError("ENOSYS", f"unknown operation: {op!r}")
            if not isinstance(args, dict):
                raise OpError("EINVAL", "'args' must be an object")
            value, body = await handler(self, channel, args, payload)
            result = {"ok": True, "value": value}
        except asyncio.CancelledError:
            result = {"ok": False, "error": P.error_body("ECANCELED", "call cancelled")}
        except OpError as exc:
            result = {"ok": False, "error": exc.body()}
        except OSError as exc:
            result = {"ok": False, "error": from_os_error(exc).body()}
        except Exception as exc:  # a bug here must not take the supervisor down
            log.exception("operation %s failed", op)
            result = {"ok": False, "error": P.error_body("EIO", f"{type(exc).__name__}: {exc}")}
        self.channels.pop(channel.id, None)
        channel.send_window.close()
        await self._safe_send({"t": P.RESULT, "ch": channel.id, **result}, body)
