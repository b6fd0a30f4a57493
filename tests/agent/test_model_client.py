"""The coding agent's standard-library Messages client (vm_images/coding_agent/model.py)
against small real HTTP servers on a unix socket: how it frames bodies, reuses
connections, and reports what went wrong."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from vm_images.coding_agent import model as api

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {name}\r\ndata: {json.dumps({'type': name, **data})}\r\n\r\n".encode()
        for name, data in events
    )


STREAM = sse(
    ("message_start", {"message": {"content": [], "usage": {"input_tokens": 7}}}),
    ("ping", {}),
    ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
    ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
    ("content_block_stop", {"index": 0}),
    (
        "content_block_start",
        {
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t1", "name": "read", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"path": "a'}},
    ),
    (
        "content_block_delta",
        {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '.py"}'}},
    ),
    ("content_block_stop", {"index": 1}),
    ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}}),
    ("message_stop", {}),
)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]) if k
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def chunked(data: bytes, size: int = 7) -> bytes:
    """``data`` in small chunks: events and lines split across chunk boundaries."""
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


@asynccontextmanager
async def server(tmp_path: Path, handler: Handler) -> AsyncIterator[str]:
    path = str(tmp_path / "gw.sock")
    srv = await asyncio.start_unix_server(handler, path)
    try:
        yield path
    finally:
        srv.close()


async def collect(client: api.ModelClient) -> tuple[api.Message, list[tuple[str, str]]]:
    deltas: list[tuple[str, str]] = []

    async def on_delta(kind: str, text: str) -> None:
        deltas.append((kind, text))

    message = await client.stream(b'{"stream":true}', {"x-agentvm-session": "s1"}, on_delta)
    return message, deltas


async def test_a_chunked_stream_is_accumulated_over_one_kept_alive_connection(
    tmp_path: Path,
) -> None:
    connections: list[int] = []
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while not reader.at_eof():
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + chunked(STREAM)
            )
            await writer.drain()
        writer.close()

    async with server(tmp_path, handle) as path:
        client = api.ModelClient("http://127.0.0.1:4141/prefix", "sk-test", path)
        for _ in range(2):
            message, deltas = await collect(client)
            assert message.stop_reason == "tool_use"
            assert message.content == [
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a.py"}},
            ]
            assert message.usage == {"input_tokens": 7, "output_tokens": 3}
            assert deltas == [("text", "Hel"), ("text", "lo")]
        await client.close()
    assert len(connections) == 1 and len(seen) == 2
    line, headers, body = seen[0]
    assert line == "POST /prefix/v1/messages HTTP/1.1"
    assert headers["x-api-key"] == "sk-test" and headers["anthropic-version"] == "2023-06-01"
    assert headers["x-agentvm-session"] == "s1" and body == b'{"stream":true}'


async def test_an_error_status_carries_the_body_and_retry_after(tmp_path: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = json.dumps({"type": "error", "error": {"type": "overloaded_error"}}).encode()
        writer.write(
            b"HTTP/1.1 529 Overloaded\r\nretry-after-ms: 250\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    async with server(tmp_path, handle) as path:
        client = api.ModelClient(None, "k", path)
        with pytest.raises(api.APIStatusError) as info:
            await collect(client)
    assert info.value.status_code == 529 and info.value.retry_after == 0.25
    assert "overloaded_error" in str(info.value)


async def test_a_stream_cut_short_and_a_refused_connection(tmp_path: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(STREAM)[:90]
        )
        await writer.drain()
        writer.close()

    async with server(tmp_path, handle) as path:
        with pytest.raises(api.StreamCut):
            await collect(api.ModelClient(None, "k", path))
    with pytest.raises(api.APIConnectionError):
        await collect(api.ModelClient(None, "k", str(tmp_path / "nobody.sock")))


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="ANTHROPIC_BASE_URL"):
        api.ModelClient("ftp://example.com", "k")
