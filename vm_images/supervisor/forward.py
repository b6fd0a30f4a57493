"""Loopback forwarders to host services (the LLM gateway, the egress proxy).

The sandbox has no network; the host serves each service on a unix socket in the
control directory (bind-mounted read-only at ``/run/agentvm``). A forwarder listens
on ``127.0.0.1:<port>`` and splices each TCP connection to a fresh connection on
that socket, byte for byte (the protocol is the host's business). When the host is
not serving the socket, the client gets the forwarder's ``unavailable`` reply.

A forwarder with ``wait_s`` (the gateway's) rides out a host restart: when the
socket refuses connections (the host died and left it behind) or is missing after
it had been served (the host stopped), the accepted connection waits up to
``wait_s`` seconds, retrying the connect, before the ``unavailable`` reply — so a
model call cut by the host's death and retried by the agent reaches the new host.
A socket never served answers at once (no gateway at all). At most
``MAX_WAITING`` connections wait at a time; more get the reply at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

log = logging.getLogger("agentvm.supervisor")

BUF = 64 * 1024
# Connections that may wait for the host at once (each holds a socket and a task).
MAX_WAITING = 64
# First and largest pause between connect attempts while waiting for the host.
RETRY_START = 0.05
RETRY_MAX = 1.0


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


class _Waiting:
    """What a forwarder knows about its host socket across connections."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.served = False  # a connect succeeded once: the host serves this socket
        self.count = 0


async def _connect(
    path: str, state: _Waiting | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the host socket, waiting (bounded) for a host that went away."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (state.wait_s if state is not None else 0.0)
    delay = RETRY_START
    waiting = False
    try:
        while True:
            try:
                conn = await asyncio.open_unix_connection(path)
            except OSError as exc:
                never_served = isinstance(exc, FileNotFoundError) and not (
                    state is not None and state.served
                )
                if state is None or never_served or loop.time() + delay > deadline:
                    raise
                if not waiting:
                    if state.count >= MAX_WAITING:
                        raise
                    waiting = True
                    state.count += 1
                    log.info("host socket %s unavailable (%s): waiting", path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if state is not None:
                state.served = True
            return conn
    finally:
        if waiting and state is not None:
            state.count -= 1


async def splice(
    path: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    unavailable: Callable[[str], bytes],
    waiting: _Waiting | None = None,
) -> None:
    """Connect to the unix socket ``path`` and copy both ways until both sides end."""
    try:
        up_reader, up_writer = await _connect(path, waiting)
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
    name: str,
    port: int,
    path: str,
    unavailable: Callable[[str], bytes],
    *,
    wait_s: float = 0.0,
) -> asyncio.AbstractServer | None:
    """Listen on ``127.0.0.1:port``; ``None`` (logged) if the port is taken.
    ``wait_s``: how long a connection waits for a host that went away (module doc)."""
    state = _Waiting(wait_s) if wait_s > 0 else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(path, reader, writer, unavailable, state)

    try:
        return await asyncio.start_server(handle, "127.0.0.1", port)
    except OSError as exc:
        log.warning("%s forwarder cannot listen on 127.0.0.1:%d: %s", name, port, exc)
        return None
