"""The control socket and the supervisor link hold bounded memory on the host.

The host's memory is measured as the peak RSS of this process (it holds the
ControlServer): ``/proc/self/clear_refs`` resets the peak before each attack.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.sandbox import Sandbox
from host.sandbox.connection import Channel, SupervisorConnection
from host.sandbox.control import MAX_PENDING, ControlServer
from tests.sandbox.conftest import backend, docker_engine, image, sandbox, spec
from tests.support import eventually
from vm_images.supervisor import protocol as P

__all__ = ["backend", "docker_engine", "image", "sandbox", "spec"]

MiB = 1024 * 1024

# Run inside the sandbox: 100 connections to the control socket, each announcing a
# 4 MiB frame and pushing as much of it as the host takes, all held open at once.
FLOOD = r"""
import socket, struct, sys, time
conns, pushed = [], 0
for _ in range(100):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/run/agentvm/control.sock")
    except OSError:
        continue
    s.setblocking(False)
    try:
        s.send(struct.pack(">II", 4 * 1024 * 1024 + 4096, 64 * 1024))
        junk = b"x" * (1024 * 1024)
        for _ in range(8):
            pushed += s.send(junk)
    except OSError:
        pass
    conns.append(s)
time.sleep(1.5)
print(len(conns), pushed)
"""

# A connection that never says hello is closed by the host.
SILENT = r"""
import socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/agentvm/control.sock")
s.settimeout(60)
print(repr(s.recv(1)))
"""


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_unauthenticated_flood_is_bounded(sandbox: Sandbox) -> None:
    before = _rss()
    _reset_peak()
    result = await sandbox.exec(["python3", "-c", FLOOD], timeout=60)
    assert result.exit_code == 0, result.stderr
    peak = _peak_rss()
    # 100 connections used to pin ~4 MiB each (408 MiB); now at most MAX_PENDING
    # small hellos wait at once.
    assert peak - before < 64 * MiB, f"host RSS grew by {(peak - before) / MiB:.0f} MiB"
    await eventually(
        lambda: _refused(sandbox), lambda n: n >= 100 - MAX_PENDING, what="refused count"
    )
    assert sandbox.control.pending == 0
    # The authenticated link was never disturbed.
    assert (await sandbox.exec("echo fine")).stdout == "fine\n"


async def _refused(sandbox: Sandbox) -> int:
    return sandbox.control.refused


async def test_silent_connection_is_closed(sandbox: Sandbox) -> None:
    result = await sandbox.exec(["python3", "-c", SILENT], timeout=60)
    assert result.stdout.strip() == "b''"
    assert sandbox.control.pending == 0


# --- a hostile peer that knows the token (e.g. a subverted supervisor) ----------------------


async def _linked(tmp: Path) -> tuple[ControlServer, asyncio.StreamReader, asyncio.StreamWriter]:
    token = secrets.token_hex(8)
    server = ControlServer(tmp, token)
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    hello = {"t": P.HELLO, "ch": 0, "version": P.VERSION, "token": token, "pid": 1}
    writer.write(P.encode(hello))
    await writer.drain()
    assert (await P.read_frame(reader)) is not None  # welcome
    await server.connection(5)
    return server, reader, writer


async def _flood(writer: asyncio.StreamWriter, header: dict[str, object], count: int) -> None:
    frame = P.encode(header)
    for start in range(0, count, 1000):
        writer.write(frame * min(1000, count - start))
        try:
            await writer.drain()
        except ConnectionError:
            return


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for the socket (unix socket paths are limited to 108 bytes)."""
    path = Path(f"/tmp/agentvm-b-{os.getpid()}-{secrets.token_hex(3)}")
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("kind", ["event", "empty_data"])
async def test_channel_frames_are_bounded(short_tmp: Path, kind: str) -> None:
    server, _reader, writer = await _linked(short_tmp)
    conn = server.live()
    assert isinstance(conn, SupervisorConnection)
    channel = await conn.open("ping")  # a call nobody consumes
    header: dict[str, object] = (
        {"t": P.EVENT, "ch": channel.id, "kind": "started", "pid": 7}
        if kind == "event"
        else {"t": P.DATA, "ch": channel.id, "s": "stdout"}
    )
    before = _rss()
    _reset_peak()
    await _flood(writer, header, 300_000)
    if kind == "event":
        # Too many queued events is a protocol violation: the link goes.
        await eventually(lambda: _closed(conn), timeout=30)
        assert "events queued" in conn.close_reason
    else:
        # Empty data frames are dropped, never queued: only the final real one is.
        writer.write(P.encode(header, b"end"))
        await writer.drain()
        await eventually(lambda: _queued(channel), lambda n: n > 0, timeout=30)
        assert channel.queue.qsize() == 1 and not conn.closed.is_set()
    assert _peak_rss() - before < 64 * MiB
    writer.close()
    await server.close()


async def test_unread_pongs_are_bounded(short_tmp: Path) -> None:
    server, _reader, writer = await _linked(short_tmp)
    conn = server.live()
    assert conn is not None
    before = _rss()
    _reset_peak()
    # Pings while never reading the pongs: the host stops at its write backlog bound.
    await _flood(writer, {"t": P.PING, "ch": 0, "id": 1}, 2_000_000)
    await eventually(lambda: _closed(conn), timeout=60)
    assert "does not read" in conn.close_reason
    assert _peak_rss() - before < 64 * MiB
    writer.close()
    await server.close()


async def _closed(conn: SupervisorConnection) -> bool:
    return conn.closed.is_set()


async def _queued(channel: Channel) -> int:
    return channel.queue.qsize()
