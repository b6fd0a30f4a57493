"""Host end of one supervisor link: frames, channels and credit (no op semantics)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

from vm_images.supervisor import protocol as P
from vm_images.supervisor.flow import RecvWindow, SendWindow

from .errors import from_wire

log = logging.getLogger("agentvm.sandbox")


# Per channel, at most this many events may wait for the consumer (the supervisor
# sends one, ``started``); more is a protocol violation that closes the link.
MAX_QUEUED_EVENTS = 16
# Bytes of pongs and credit the host may have queued for a supervisor that does not
# read; beyond it the link is closed rather than buffered.
MAX_WRITE_BACKLOG = 1024 * 1024
# Liveness: while a call is outstanding and nothing arrived for PROBE_AFTER seconds,
# the host pings; no frame within PING_TIMEOUT more and the link is declared
# unresponsive (a frozen or paused container), failing every call on it.
PROBE_AFTER = 2.0
PING_TIMEOUT = 5.0


class LinkClosed(ConnectionError):
    """The supervisor link ended while a call was using it."""


class LinkUnresponsive(LinkClosed):
    """The supervisor stopped answering (frozen or paused container): the host gave up."""


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
        self.queued_events = 0
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
            raise (LinkUnresponsive if self.conn.unresponsive else LinkClosed)(a)
        if kind == _EVENT:
            self.queued_events -= 1
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
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: dict[str, Any],
        *,
        probe_after: float = PROBE_AFTER,
        ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.hello = hello
        self.channels: dict[int, Channel] = {}
        self._ids = itertools.count(1)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.unresponsive = False
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.probe_after = probe_after
        self.ping_timeout = ping_timeout
        self._last_rx = time.monotonic()
        self._ping_sent: float | None = None
        self._ping_ids = itertools.count(1)
        # Sends (drains) in progress: a write blocked on a frozen peer counts as busy.
        self._sending = 0

    @property
    def supervisor_boot_id(self) -> str:
        return str(self.hello.get("boot_id", ""))

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop())
        self._watchdog = asyncio.create_task(self._watch())

    def _error(self) -> LinkClosed:
        cls = LinkUnresponsive if self.unresponsive else LinkClosed
        return cls(self.close_reason or "link closed")

    async def send(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        if self.closed.is_set():
            raise self._error()
        self.writer.write(P.encode(header, payload))
        self._sending += 1
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._shutdown(f"write failed: {exc}")
            raise self._error() from exc
        finally:
            self._sending -= 1
        if self.closed.is_set():
            raise self._error()

    def _write_small(self, header: dict[str, Any]) -> None:
        """Queue a control frame without waiting; a peer that lets them pile up is cut."""
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            raise P.ProtocolError("the supervisor does not read what the host sends")
        self.writer.write(P.encode(header))

    def give_up(self, reason: str) -> None:
        """Declare the supervisor unresponsive: every call on this link fails now."""
        self.unresponsive = True
        self._shutdown(reason)
        if self._task is not None:
            self._task.cancel()

    async def probe(self, timeout: float) -> bool:
        """True if the supervisor answers a ping (or any frame arrives) within ``timeout``."""
        if self.closed.is_set():
            return False
        start = time.monotonic()
        with contextlib.suppress(P.ProtocolError, ConnectionError, OSError):
            self._write_small({"t": P.PING, "ch": 0, "id": next(self._ping_ids)})
        while time.monotonic() - start < timeout and not self.closed.is_set():
            if self._last_rx >= start:
                return True
            await asyncio.sleep(min(0.05, timeout))
        return self._last_rx >= start

    async def _watch(self) -> None:
        """Declare the link unresponsive when a call waits and the supervisor is silent."""
        tick = max(0.05, min(self.probe_after, self.ping_timeout) / 4)
        while not self.closed.is_set():
            await asyncio.sleep(tick)
            now = time.monotonic()
            if not (self.channels or self._sending):
                self._ping_sent = None
                continue
            if self._ping_sent is not None and self._last_rx >= self._ping_sent:
                self._ping_sent = None
            if self._ping_sent is None:
                if now - self._last_rx >= self.probe_after:
                    self._ping_sent = now
                    try:
                        self._write_small({"t": P.PING, "ch": 0, "id": next(self._ping_ids)})
                    except P.ProtocolError:
                        pass  # counts as no answer
            elif now - self._ping_sent >= self.ping_timeout:
                log.warning("supervisor link: no answer for %.1fs, giving up", now - self._last_rx)
                self.give_up(f"supervisor unresponsive for {now - self._last_rx:.1f}s")

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
        if self._watchdog is not None:
            self._watchdog.cancel()
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
        # abort(): a frozen peer must not keep unsent bytes (and drain()) around.
        self.writer.transport.abort()

    async def _read_loop(self) -> None:
        reason = "supervisor closed the link"
        try:
            while True:
                frame = await P.read_frame(self.reader)
                if frame is None:
                    break
                self._last_rx = time.monotonic()
                self._dispatch(*frame)
        except P.ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("supervisor link: %s", reason)
        except (ConnectionError, OSError) as exc:
            reason = f"link error: {exc}"
        finally:
            self._shutdown(reason)
            if self._watchdog is not None:
                self._watchdog.cancel()

    def _dispatch(self, header: dict[str, Any], payload: bytes) -> None:
        kind, ch = header["t"], header.get("ch", 0)
        # Every queued item is bounded: data by the window, events by count, empty data
        # frames are dropped, pongs are written only while the peer reads them.
        if ch == 0:
            if kind == P.PING:
                self._write_small({"t": P.PONG, "ch": 0, "id": header.get("id")})
            return
        channel = self.channels.get(ch)
        if channel is None:
            return  # a late frame for a call we gave up on
        if kind == P.DATA:
            if not payload:
                return  # carries nothing; queueing it would be unbounded
            channel.unconsumed += len(payload)
            if channel.unconsumed > P.WINDOW:
                raise P.ProtocolError(f"channel {ch} exceeded its flow-control window")
            channel.queue.put_nowait((_DATA, str(header.get("s", "")), payload))
        elif kind == P.EVENT:
            channel.queued_events += 1
            if channel.queued_events > MAX_QUEUED_EVENTS:
                raise P.ProtocolError(f"channel {ch}: more than {MAX_QUEUED_EVENTS} events queued")
            channel.queue.put_nowait((_EVENT, header, None))
        elif kind == P.CREDIT:
            channel.send_window.grant(int(header.get("n", 0)))
        elif kind == P.RESULT:
            self.channels.pop(ch, None)
            channel.send_window.close()
            channel.queue.put_nowait((_RESULT, header, payload))
