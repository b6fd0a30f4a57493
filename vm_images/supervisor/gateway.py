"""Loopback forwarder to the host's LLM gateway (docs/gateway.md).

The sandbox has no network; the host serves an Anthropic-compatible HTTP endpoint
on ``<control dir>/gateway.sock``. We listen on ``127.0.0.1:<port>`` and splice
each TCP connection to a fresh connection on that unix socket, byte for byte
(the HTTP is the host's business). When the host is not serving a gateway the
client gets a 503 with an Anthropic-shaped error body instead of a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os

from . import protocol as P

log = logging.getLogger("agentvm.supervisor")

BUF = 64 * 1024


def gateway_port() -> int:
    raw = os.environ.get(P.GATEWAY_PORT_ENV, "")
    try:
        return int(raw) if raw else P.GATEWAY_PORT
    except ValueError:
        return P.GATEWAY_PORT


def _unavailable(reason: str) -> bytes:
    body = json.dumps(
        {
            "type": "error",
            "error": {"type": "api_error", "message": f"agentvm LLM gateway unavailable: {reason}"},
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await src.read(BUF)
            if not chunk:
                break
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        pass


async def _splice(
    control_dir: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    path = os.path.join(control_dir, P.GATEWAY_SOCKET_NAME)
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(path)
    except OSError as exc:
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(_unavailable(exc.strerror or type(exc).__name__))
            await writer.drain()
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()


async def start_gateway(control_dir: str) -> asyncio.AbstractServer | None:
    """Listen on loopback; ``None`` (logged) if the port is taken."""
    port = gateway_port()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _splice(control_dir, reader, writer)

    try:
        return await asyncio.start_server(handle, "127.0.0.1", port)
    except OSError as exc:
        log.warning("gateway forwarder cannot listen on 127.0.0.1:%d: %s", port, exc)
        return None
