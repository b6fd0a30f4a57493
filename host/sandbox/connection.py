"""Host end of one supervisor link: frames, channels and credit (no op semantics)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

from vm_images.supervisor import protocol as P
from vm_images.supervisor.flow import RecvWindow, SendWindow

from .errors import from_wire

log = logging.getLogger("agentvm.sandbox")


class LinkClosed(ConnectionError):
    """The supervisor link ended while a call was using it."""


@dataclass
class Result:
    """The end of a call: its value, the RESULT payload and any data frames collected."""

    value: Any
    payload: bytes = b""
    data: dict[str, list[bytes]] = field(default_factory=dict)

    def joined(self, stream: str) -> bytes:
        return b"".join(self.data.get(stream, ()))


# Items a channel's queue carries.
_DATA, _EVENT, _RESULT, _LOST = "data", "event", "result", "lost"


class Channel:
    """One call: send data with credit, receive data/events, then one result."""

    def __init__(self, conn: SupervisorConnection, ch: int) -> None:
        self.conn = conn
        self.id = ch
        self.send_window = SendWindow()
        self.recv_window = RecvWindow()
        self.queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self.finished = False
        # Data received but not yet taken by the consumer; never above the window we
        # granted, so a misbehaving supervisor cannot make the host buffer more.
        self.unconsumed = 0

    async def send_data(self, stream: str, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), P.CHUNK):
            piece = view[start : start + P.CHUNK]
            await self.send_window.acquire(len(piece))
            await self.conn.send({"t": P.DATA, "ch": self.id, "s": stream}, piece)

    async def send_eof(self, stream: str) -> None:
        await self.conn.send({"t": P.EOF, "ch": self.id, "s": stream})

    async def send_stream(self, stream: str, chunks: AsyncIterable[bytes]) -> None:
        async for chunk in chunks:
            if chunk:
                await self.send_data(stream, chunk)
        await self.send_eof(stream)

    async def next(self) -> tuple[str, Any, Any]:
        """Next item: ("data", stream, bytes) | ("event", header, None) | ("result", ...)."""
        kind, a, b = await self.queue.get()
        if kind == _LOST:
            self.finished = True
            raise LinkClosed(a)
        if kind == _DATA:
            self.unconsumed -= len(b)
            grant = self.recv_window.consumed(len(b))
            if grant and not self.finished:
                with contextlib.suppress(ConnectionError):
                    await self.conn.send({"t": P.CREDIT, "ch": self.id, "n": grant})
        elif kind == _RESULT:
            self.finished = True
        return kind, a, b

    async def result(self) -> Result:
        """Collect everything up to the RESULT; raise the typed error if it failed."""
        data: dict[str, list[bytes]] = {}
        while True:
            kind, a, b = await self.next()
            if kind == _DATA:
                data.setdefault(a, []).append(b)
            elif kind == _RESULT:
                return self.check(a, b, data)

    @staticmethod
    def check(header: dict[str, Any], payload: bytes, data: dict[str, list[bytes]]) -> Result:
        if not header.get("ok"):
            raise from_wire(header.get("error") or {})
        return Result(header.get("value"), payload, data)

    async def cancel(self) -> None:
        """Abandon the call (the supervisor kills what it started for it)."""
        if not self.finished:
            with contextlib.suppress(ConnectionError):
                await self.conn.send({"t": P.CANCEL, "ch": self.id})


class SupervisorConnection:
    """A live, authenticated link to one sandbox's supervisor."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: dict[str, Any]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.hello = hello
        self.channels: dict[int, Channel] = {}
        self._ids = itertools.count(1)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def supervisor_boot_id(self) -> str:
        return str(self.hello.get("boot_id", ""))

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop())

    async def send(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        if self.closed.is_set():
            raise LinkClosed(self.close_reason or "link closed")
        self.writer.write(P.encode(header, payload))
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._shutdown(f"write failed: {exc}")
            raise LinkClosed(self.close_reason) from exc

    async def open(
        self, op: str, args: dict[str, Any] | None = None, payload: bytes = b""
    ) -> Channel:
        """Start a call; the payload counts against the channel's send window."""
        channel = Channel(self, next(self._ids))
        self.channels[channel.id] = channel
        if payload:
            await channel.send_window.acquire(len(payload))
        try:
            await self.send({"t": P.CALL, "ch": channel.id, "op": op, "args": args or {}}, payload)
        except BaseException:
            self.channels.pop(channel.id, None)
            raise
        return channel

    async def call(
        self, op: str, args: dict[str, Any] | None = None, payload: bytes = b""
    ) -> Result:
        channel = await self.open(op, args, payload)
        try:
            return await channel.result()
        except asyncio.CancelledError:
            await channel.cancel()
            raise

    async def close(self, reason: str = "closed by host") -> None:
        self._shutdown(reason)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def _shutdown(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for channel in self.channels.values():
            channel.send_window.close()
            channel.queue.put_nowait((_LOST, reason, None))
        self.channels.clear()
        self.writer.close()

    async def _read_loop(self) -> None:
        reason = "supervisor closed the link"
        try:
            while True:
                frame = await P.read_frame(self.reader)
                if frame is None:
                    break
                self._dispatch(*frame)
        except P.ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("supervisor link: %s", reason)
        except (ConnectionError, OSError) as exc:
            reason = f"link error: {exc}"
        finally:
            self._shutdown(reason)

    def _dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        kind, ch = header["t"], header.get("ch", 0)
        if ch == 0:
            if kind == P.PING:
                self.writer.write(P.encode({"t": P.PONG, "ch": 0, "id": header.get("id")}))
            return
        channel = self.channels.get(ch)
        if channel is None:
            return  # a late frame for a call we gave up on
        if kind == P.DATA:
            channel.unconsumed += len(payload)
            if channel.unconsumed > P.WINDOW:
                raise P.ProtocolError(f"channel {ch} exceeded its flow-control window")
            channel.queue.put_nowait((_DATA, str(header.get("s", "")), payload))
        elif kind == P.EVENT:
            channel.queue.put_nowait((_EVENT, header, None))
        elif kind == P.CREDIT:
            channel.send_window.grant(int(header.get("n", 0)))
        elif kind == P.RESULT:
            self.channels.pop(ch, None)
            channel.send_window.close()
            channel.queue.put_nowait((_RESULT, header, payload))
