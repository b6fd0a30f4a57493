"""One accepted gateway connection: HTTP/1.1 (keep-alive) via h11, with deadlines.

Everything here is driven by a hostile peer, so every wait has a deadline
(:class:`~host.gateway.limits.GatewayLimits`): the request head, each body read,
the keep-alive wait, each response write. A request is checked against the route
allowlist as soon as its head arrives, before its body is read and before any
upstream connection. A body up to ``buffer_bytes`` is read whole; a bigger one is
streamed upstream chunk by chunk, so a connection never holds more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import h11
import httpx

from .models import UsageRecord
from .routes import Refusal, Route, route, upstream_url
from .usage import MAX_JSON, SSEUsage, usage_from_json

if TYPE_CHECKING:
    from .gateway import SandboxGateway

READ_CHUNK = 64 * 1024
MAX_HEAD = 256 * 1024
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_MODEL = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9._:@/-]{1,200})"')


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def raw_error(status: int, reason: str, kind: str, message: str) -> bytes:
    """A whole ``connection: close`` error response, for when h11 cannot send one
    (before a request head was parsed)."""
    body = anthropic_error(kind, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class PeerTimeout(Exception):
    """The peer did not send (or read) in time."""


class _BodyTooLarge(Exception):
    pass


class _BodyAborted(Exception):
    pass


class HttpConnection:
    """Serves requests on one accepted socket until it closes or misbehaves."""

    def __init__(
        self, owner: SandboxGateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.owner = owner
        self.gateway = owner.gateway
        self.limits = owner.gateway.limits
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def _read(self, timeout: float) -> bytes:
        if timeout <= 0:
            raise PeerTimeout("deadline passed")
        try:
            return await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
        except TimeoutError:
            raise PeerTimeout(f"nothing received for {timeout:g}s") from None

    async def _next(self, timeout: float) -> Any:
        """The next h11 event; each socket read waits at most ``timeout``."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self._read(timeout))

    async def _next_head(self, first: bool) -> Any:
        """The next request head: the first within ``header_timeout`` of the accept;
        a later one's first byte within ``idle_timeout``, its head within
        ``header_timeout`` of that byte (a slowloris head cannot trickle forever)."""
        lim = self.limits
        deadline = time.monotonic() + (lim.header_timeout if first else lim.idle_timeout)
        started = first
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._read(deadline - time.monotonic())
            if data and not started:
                started = True
                deadline = time.monotonic() + lim.header_timeout
            self.conn.receive_data(data)

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            try:
                await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout)
            except TimeoutError:
                raise PeerTimeout("the response was not read in time") from None

    async def _write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self.writer.drain(), 5.0)

    async def serve(self) -> None:
        first = True
        while True:
            try:
                event = await self._next_head(first)
            except PeerTimeout:
                if self.conn.their_state is h11.SEND_BODY or _partial(self.conn):
                    await self._write_raw(
                        raw_error(
                            408,
                            "Request Timeout",
                            "invalid_request_error",
                            "agentvm LLM gateway: request head not received in "
                            f"{self.limits.header_timeout:g}s",
                        )
                    )
                return
            except h11.RemoteProtocolError as exc:
                await self._write_raw(
                    raw_error(
                        400,
                        "Bad Request",
                        "invalid_request_error",
                        f"agentvm LLM gateway: bad HTTP request: {exc}",
                    )
                )
                return
            first = False
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, PAUSED, ...
            if not await self._request(event):
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _reply(
        self, status: int, kind: str, message: str, *, close: bool = False, **extra: str
    ) -> None:
        body = anthropic_error(kind, message)
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *extra.items(),
        ]
        if close:
            headers.append(("connection", "close"))
        await self._send(h11.Response(status_code=status, headers=headers))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _refuse(self, r: Refusal) -> bool:
        # The body (if any) is left unread: close rather than drain it.
        await self._reply(r.status, r.kind, r.message, close=True)
        return False

    async def _request(self, request: h11.Request) -> bool:
        """Handle one request; False when the connection must close."""
        lim = self.limits
        checked = route(request.method, request.target)
        if isinstance(checked, Refusal):
            self.gateway.refused(self.owner.sandbox, checked, request.target)
            return await self._refuse(checked)
        declared = _content_length(request)
        if declared is not None and declared > lim.max_body_bytes:
            return await self._refuse(_too_large(lim.max_body_bytes))
        prefix = bytearray()
        complete = False
        try:
            while len(prefix) <= lim.buffer_bytes:
                part = await self._next(lim.body_timeout)
                if isinstance(part, h11.Data):
                    prefix += part.data
                elif isinstance(part, h11.EndOfMessage):
                    complete = True
                    break
                else:
                    return False
        except PeerTimeout:
            return await self._refuse(_body_timeout(lim.body_timeout))
        if complete and len(prefix) > lim.max_body_bytes:
            return await self._refuse(_too_large(lim.max_body_bytes))
        return await self._forward(request, checked, bytes(prefix), complete, declared)

    async def _rest(self, prefix: bytes) -> AsyncIterator[bytes]:
        """The body of a big request, streamed: the buffered prefix, then each chunk."""
        lim = self.limits
        total = len(prefix)
        yield prefix
        while True:
            try:
                part = await self._next(lim.body_timeout)
            except PeerTimeout:
                raise _BodyAborted(f"no body bytes for {lim.body_timeout:g}s") from None
            if isinstance(part, h11.Data):
                total += len(part.data)
                if total > lim.max_body_bytes:
                    raise _BodyTooLarge
                yield part.data
            elif isinstance(part, h11.EndOfMessage):
                return
            else:
                raise _BodyAborted("the connection closed mid-body")

    async def _forward(
        self, request: h11.Request, r: Route, prefix: bytes, complete: bool, declared: int | None
    ) -> bool:
        gw = self.gateway
        sandbox = self.owner.sandbox
        session_id: str | None = None
        for name, value in request.headers:
            if name.lower() == b"x-agentvm-session":
                session_id = value.decode("latin-1")[:200] or None
        refusal = gw.over_budget(sandbox)
        if refusal is not None:
            # 429 like a quota error, but never worth retrying: the SDKs honour this.
            # An unread (streamed) body means the connection cannot be reused.
            await self._reply(
                429, "rate_limit_error", refusal, close=not complete, **{"x-should-retry": "false"}
            )
            return complete
        headers = gw.upstream_headers(list(request.headers))
        if headers is None:
            await self._reply(
                401,
                "authentication_error",
                "agentvm LLM gateway: the host has no ANTHROPIC_API_KEY and the request "
                "carried no key of its own",
                close=not complete,
            )
            return complete
        content: bytes | AsyncIterator[bytes]
        if complete:
            content = prefix
        else:
            content = self._rest(prefix)
            if declared is not None:
                headers.append(("content-length", str(declared)))
        url = upstream_url(gw.upstream_url, r)
        upstream = httpx.Request(r.method, url, headers=headers, content=content)
        try:
            response = await gw.client.send(upstream, stream=True)
        except _BodyTooLarge:
            return await self._refuse(_too_large(self.limits.max_body_bytes))
        except _BodyAborted as exc:
            if self.conn.their_state is h11.SEND_BODY:
                return await self._refuse(
                    Refusal(408, "invalid_request_error", f"agentvm LLM gateway: {exc}")
                )
            return False
        except httpx.HTTPError as exc:
            await self._reply(
                502,
                "api_error",
                f"agentvm LLM gateway: upstream {gw.upstream} failed: {type(exc).__name__}",
                close=not complete,
            )
            return complete
        try:
            await self._relay(response, session_id, prefix, complete, r.path)
        finally:
            await response.aclose()
        return True

    async def _relay(
        self,
        response: httpx.Response,
        session_id: str | None,
        body: bytes,
        complete: bool,
        path: str,
    ) -> None:
        out_headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in HOP_BY_HOP
        ]
        out = _Coalesced(self)
        await out.send(h11.Response(status_code=response.status_code, headers=out_headers))
        ctype = response.headers.get("content-type", "")
        sse = SSEUsage() if ctype.startswith("text/event-stream") else None
        collected = bytearray() if sse is None and "json" in ctype else None
        try:
            async for chunk in response.aiter_raw():
                if sse is not None:
                    sse.feed(chunk)
                elif collected is not None and len(collected) < MAX_JSON:
                    collected += chunk
                await out.send(h11.Data(data=chunk))
            await out.send(h11.EndOfMessage())
            await out.flush()
        finally:
            out.close()
            # Record even a stream cut short: the tokens were spent.
            usage = sse.usage if sse is not None else None
            if collected is not None and response.status_code < 400:
                usage = usage_from_json(bytes(collected))
            if usage is not None:
                usage.requests = 1
                await self.gateway.record(
                    UsageRecord(
                        sandbox=self.owner.sandbox,
                        session_id=session_id,
                        # Read from the request only now, once the answer is out: a
                        # whole conversation's JSON is not parsed on the turn's path.
                        model=_model(body, complete),
                        path=path,
                        status=response.status_code,
                        stream=sse is not None,
                        usage=usage,
                    )
                )


class _Coalesced:
    """A response's bytes written when the relay would wait for upstream anyway (at the
    end of the event loop's turn), not one socket write per event: the head goes with
    the first chunk, and the chunks upstream delivered in one read go together (each
    write wakes the agent's process: most of a short turn's cost on a busy machine).
    Bounded like ``_send``: past ``READ_CHUNK`` unwritten bytes, or with the socket's
    buffer full, it writes and waits (``write_timeout``) for the peer to read."""

    def __init__(self, owner: HttpConnection) -> None:
        self.owner = owner
        self.pending = bytearray()
        self.scheduled: asyncio.Handle | None = None

    def _write(self) -> None:
        self.scheduled = None
        if self.pending:
            self.owner.writer.write(bytes(self.pending))
            self.pending.clear()

    async def send(self, event: Any) -> None:
        self.pending += self.owner.conn.send(event) or b""
        if len(self.pending) >= READ_CHUNK:
            await self.flush()
        elif self.scheduled is None and self.pending:
            self.scheduled = asyncio.get_running_loop().call_soon(self._write)
        if self.owner.writer.transport.get_write_buffer_size() > READ_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if self.scheduled is not None:
            self.scheduled.cancel()
        self._write()
        try:
            await asyncio.wait_for(self.owner.writer.drain(), self.owner.limits.write_timeout)
        except TimeoutError:
            raise PeerTimeout("the response was not read in time") from None

    def close(self) -> None:
        """The relay ended (or failed): what is pending goes out now (< READ_CHUNK), as
        it would have before a failure when written event by event."""
        if self.scheduled is not None:
            self.scheduled.cancel()
        self._write()


def _partial(conn: h11.Connection) -> bool:
    """Bytes of an unfinished request head are buffered."""
    return bool(getattr(conn, "trailing_data", (b"", False))[0])


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name.lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _model(prefix: bytes, complete: bool) -> str | None:
    if complete and prefix[:1] == b"{":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            parsed = json.loads(prefix)
            if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
                return str(parsed["model"])[:200]
            return None
    # A streamed body: best effort from its first bytes (the model is informational).
    m = _MODEL.search(prefix[:65536])
    return m.group(1).decode() if m else None


def _too_large(limit: int) -> Refusal:
    return Refusal(
        413, "request_too_large", f"agentvm LLM gateway: request body over {limit} bytes"
    )


def _body_timeout(timeout: float) -> Refusal:
    return Refusal(
        408, "invalid_request_error", f"agentvm LLM gateway: no body bytes for {timeout:g}s"
    )
