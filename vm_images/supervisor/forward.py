"""Loopback forwarders to host services (the LLM gateway, the egress proxy).

The sandbox has no network; the host serves each service on a unix socket in the
control directory (bind-mounted read-only at ``/run/agentvm``). A forwarder listens
on ``127.0.0.1:<port>`` and splices each TCP connection to a fresh connection on
that socket, byte for byte (the protocol is the host's business). When the host is
not serving the socket, the client gets the forwarder's ``unavailable`` reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

log = logging.getLogger("agentvm.supervisor")

BUF = 64 * 1024


def port_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await src.read(BUF)
            if not chunk:
                break
            dst.write(chunk)
            await dst.drain()  # bounded: never more than one chunk in flight
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        pass


async def splice(
    path: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    unavailable: Callable[[str], bytes],
) -> None:
    """Connect to the unix socket ``path`` and copy both ways until both sides end."""
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(path)
    except OSError as exc:
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(unavailable(exc.strerror or type(exc).__name__))
            await writer.drain()
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()


async def start_forwarder(
    name: str, port: int, path: str, unavailable: Callable[[str], bytes]
) -> asyncio.AbstractServer | None:
    """Listen on ``127.0.0.1:port``; ``None`` (logged) if the port is taken."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(path, reader, writer, unavailable)

    try:
        return await asyncio.start_server(handle, "127.0.0.1", port)
    except OSError as exc:
        log.warning("%s forwarder cannot listen on 127.0.0.1:%d: %s", name, port, exc)
        return None
