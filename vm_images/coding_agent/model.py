"""The model call: Anthropic's streaming Messages API over HTTP/1.1, with the
standard library only.

The agent used the ``anthropic`` SDK (and its httpx and pydantic) for this: ~1.7 s
of imports and ~60 MiB for what is one POST and a server-sent event stream, which
the agent encodes itself already (the transcript is plain JSON). This client sends
what ``messages.stream`` sends, parses the events and accumulates the message as
the SDK's ``get_final_message`` does, as plain dicts. One kept-alive connection per
concurrent request (to the gateway's unix socket, or TCP/TLS to a URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import NAME, __version__

API_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"
CONNECT_TIMEOUT = 30.0
# The longest wait for the next bytes of a response (the SDK's default timeout).
READ_TIMEOUT = 600.0
# Bounds on what the upstream may send: one header block, one SSE event, an error body.
MAX_HEADERS = 64 * 2**10
MAX_EVENT = 16 * 2**20
MAX_ERROR_BODY = 2**20
IDLE_CONNECTIONS = 4


class ModelError(Exception):
    """A model call failed."""


class APIConnectionError(ModelError):
    """No connection, or it broke before the response began."""


class StreamCut(ModelError):
    """The response broke off mid-way (worth another try)."""


class APIStatusError(ModelError):
    """The API answered an error status (or an ``error`` event in the stream)."""

    def __init__(self, status_code: int, body: Any, retry_after: float | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"Error code: {status_code} - {body}")


@dataclass
class Message:
    """The final message, as the API's JSON (content blocks as dicts)."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ModelClient:
    """POST /v1/messages (streamed) to ``base_url``, or over the unix ``socket``."""

    def __init__(self, base_url: str | None, api_key: str, socket: str | None = None) -> None:
        url = urlsplit(base_url or DEFAULT_BASE_URL)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"ANTHROPIC_BASE_URL must be an http(s) URL, not {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.netloc = url.netloc
        self.prefix = url.path.rstrip("/")
        self.api_key = api_key
        self.socket = socket
        self._idle: list[Conn] = []

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()

    async def _connect(self) -> Conn:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if self.socket is not None:
                    return await asyncio.open_unix_connection(self.socket, limit=MAX_EVENT)
                ssl_ctx: Any = None
                if self.tls:
                    import ssl  # only for a direct https URL (the sandbox uses the gateway)

                    ssl_ctx = ssl.create_default_context()
                return await asyncio.open_connection(
                    self.host, self.port, ssl=ssl_ctx, limit=MAX_EVENT
                )
        except (OSError, TimeoutError) as exc:
            raise APIConnectionError(f"cannot connect to the model API: {exc!r}") from exc

    async def stream(
        self,
        body: bytes,
        headers: dict[str, str],
        on_delta: Callable[[str, str], Awaitable[None]],
    ) -> Message:
        """Send one streamed Messages request; ``on_delta(kind, text)`` gets each text
        and thinking delta as it arrives; returns the accumulated message."""
        head = (
            f"POST {self.prefix}/v1/messages HTTP/1.1\r\nhost: {self.netloc}\r\n"
            f"x-api-key: {self.api_key}\r\nanthropic-version: {API_VERSION}\r\n"
            f"content-type: application/json\r\naccept: application/json\r\n"
            f"user-agent: {NAME}/{__version__}\r\ncontent-length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        ).encode()
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._connect()
        keep = False
        try:
            try:
                conn[1].write(head + body)
                await conn[1].drain()
                status, resp_headers = await _read_head(conn[0])
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                if not reused:
                    raise APIConnectionError(f"the model API connection failed: {exc!r}") from exc
                # A kept-alive connection the server closed meanwhile: a new one.
                conn[1].close()
                conn = await self._connect()
                conn[1].write(head + body)
                await conn[1].drain()
                status, resp_headers = await _read_head(conn[0])
            body_reader = _Body(conn[0], resp_headers)
            if status != 200:
                data = await body_reader.read_all(MAX_ERROR_BODY)
                keep = body_reader.done and resp_headers.get("connection") != "close"
                raise APIStatusError(status, _json_or_text(data), _retry_after(resp_headers))
            message = await _accumulate(body_reader, on_delta)
            keep = body_reader.done and resp_headers.get("connection") != "close"
            return message
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise StreamCut(f"the model's response broke off: {exc!r}") from exc
        finally:
            if keep and len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(conn)
            else:
                conn[1].close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    async with asyncio.timeout(READ_TIMEOUT):
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise StreamCut("the model API's response head is too long") from exc
    if len(raw) > MAX_HEADERS:
        raise StreamCut("the model API's response head is too long")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise StreamCut(f"not an HTTP response: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class _Body:
    """A response body: chunked, sized, or up to the connection's end."""

    def __init__(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        self.reader = reader
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.left = int(length) if length and length.isdigit() and not self.chunked else None
        self.done = False

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self.done:
            return b""
        async with asyncio.timeout(READ_TIMEOUT):
            if self.chunked:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    self.done = True
                    return b""
                data = await self.reader.readexactly(size + 2)
                return data[:-2]
            if self.left is not None:
                if self.left == 0:
                    self.done = True
                    return b""
                data = await self.reader.read(min(self.left, 2**16))
                if not data:
                    raise asyncio.IncompleteReadError(b"", self.left)
                self.left -= len(data)
                return data
            data = await self.reader.read(2**16)
            if not data:
                self.done = True  # up to the connection's end: not reusable
            return data

    async def read_all(self, limit: int) -> bytes:
        out = bytearray()
        while data := await self.read():
            out += data
            if len(out) > limit:
                break
        return bytes(out[:limit])


def _json_or_text(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _retry_after(headers: dict[str, str]) -> float | None:
    """The pause the server asks for (``retry-after-ms`` or ``retry-after`` seconds)."""
    with contextlib.suppress(ValueError):
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    return None


async def _events(body: _Body) -> Any:
    """The server-sent events of the body: (event name, data JSON)."""
    buf = b""
    while True:
        chunk = await body.read()
        if not chunk:
            return
        # Normalised over the whole leftover: a CRLF may be split between chunks.
        buf = (buf + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            name, data = "", []
            for line in raw.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
            if data:
                yield name, json.loads(b"\n".join(data))
        if len(buf) > MAX_EVENT:
            raise StreamCut("an event of the model's stream is too long")


async def _accumulate(body: _Body, on_delta: Callable[[str, str], Awaitable[None]]) -> Message:
    """The final message from the stream's events (what the SDK's accumulator does)."""
    message = Message()
    partial: dict[int, str] = {}  # tool input JSON, by block index
    async for name, event in _events(body):
        kind = event.get("type", name) if isinstance(event, dict) else name
        if kind == "message_start":
            start = event.get("message") or {}
            message.usage = dict(start.get("usage") or {})
            message.content = list(start.get("content") or [])
        elif kind == "content_block_start":
            block = dict(event.get("content_block") or {})
            index = int(event.get("index", len(message.content)))
            while len(message.content) <= index:
                message.content.append({})
            message.content[index] = block
        elif kind == "content_block_delta":
            index, delta = int(event.get("index", 0)), event.get("delta") or {}
            block = message.content[index]
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
                if delta.get("text"):
                    await on_delta("text", delta["text"])
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
                if delta.get("thinking"):
                    await on_delta("thinking", delta["thinking"])
            elif dtype == "signature_delta":
                block["signature"] = delta.get("signature", "")
            elif dtype == "input_json_delta":
                partial[index] = partial.get(index, "") + delta.get("partial_json", "")
        elif kind == "content_block_stop":
            index = int(event.get("index", 0))
            if index in partial:
                text = partial.pop(index)
                message.content[index]["input"] = json.loads(text) if text.strip() else {}
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            if "stop_reason" in delta:
                message.stop_reason = delta["stop_reason"]
            for key, value in (event.get("usage") or {}).items():
                if value is not None:
                    message.usage[key] = value
        elif kind == "error":
            err = event.get("error") or {}
            status = 529 if err.get("type") == "overloaded_error" else 500
            raise APIStatusError(status, event)
    message.content = [_clean(b) for b in message.content if b]
    return message


def _clean(block: dict[str, Any]) -> dict[str, Any]:
    """A block as the transcript keeps it (a text block without empty extras)."""
    if block.get("type") == "text":
        return {"type": "text", "text": block.get("text", "")}
    return {k: v for k, v in block.items() if v is not None}
