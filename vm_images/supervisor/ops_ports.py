"""TCP ports inside the sandbox: which ones listen, and a byte stream to one of them.

``list_ports`` reads ``/proc/net/tcp{,6}`` for LISTEN sockets and maps their inodes
to processes through ``/proc/<pid>/fd`` (bounded scans). ``port_connect`` opens a
TCP connection to ``127.0.0.1:<port>`` (``::1`` when only IPv6 listens) and relays
bytes both ways over the channel: host ``data in`` → socket, socket → ``data out``,
flow-controlled by the channel's credit (never more than one read buffer here).
The host's preview proxy (host/sandbox/ports.py) speaks HTTP over it; the sandbox
still has no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from . import protocol as P
from .errors import OpError, from_os_error
from .link import Channel, Handler, Link, Reply

BUF = 64 * 1024
CONNECT_TIMEOUT = 5.0
# Bounds on the /proc scan that maps sockets to processes.
MAX_PIDS = 4096
MAX_FDS = 100_000
MAX_PORTS = 1024
_LISTEN = "0A"


def _address(hex_addr: str) -> str:
    """``0100007F`` → ``127.0.0.1``; IPv6 as four little-endian 32-bit words."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _listening() -> dict[str, tuple[int, str]]:
    """inode → (port, address) of every LISTEN socket in this network namespace."""
    found: dict[str, tuple[int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii", errors="replace") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != _LISTEN:
                continue
            addr, _, port = parts[1].partition(":")
            try:
                found[parts[9]] = (int(port, 16), _address(addr))
            except (ValueError, OSError):
                continue
            if len(found) >= MAX_PORTS:
                return found
    return found


def _owners(inodes: set[str]) -> dict[str, int]:
    """inode → pid of a process holding that socket (bounded scan of /proc)."""
    owners: dict[str, int] = {}
    fds = 0
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()][:MAX_PIDS]
    except OSError:
        return owners
    for pid in sorted(pids):
        try:
            entries = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in entries:
            fds += 1
            if fds > MAX_FDS:
                return owners
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners.setdefault(target[8:-1], pid)
        if len(owners) == len(inodes):
            break
    return owners


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()[:64]
    except OSError:
        return None


def list_ports() -> list[dict[str, Any]]:
    """Listening TCP ports (the supervisor's own loopback forwarders left out)."""
    sockets = _listening()
    owners = _owners(set(sockets))
    me = os.getpid()
    ports: list[dict[str, Any]] = []
    for inode, (port, address) in sockets.items():
        pid = owners.get(inode)
        if pid == me:
            continue
        entry: dict[str, Any] = {"port": port, "address": address}
        if pid is not None:
            entry["pid"] = pid
            entry["process"] = _comm(pid)
        ports.append(entry)
    ports.sort(key=lambda e: (e["port"], e["address"]))
    return ports


def _port(args: dict[str, Any]) -> int:
    port = args.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise OpError("EINVAL", "'port' must be an integer from 1 to 65535")
    return port


async def _connect(port: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """127.0.0.1 first, then ::1 (a server listening on IPv6 loopback only)."""
    first: OSError | None = None
    for host in ("127.0.0.1", "::1"):
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port, limit=BUF), timeout)
        except TimeoutError:
            raise OpError("ETIMEDOUT", f"connecting to port {port} timed out") from None
        except OSError as exc:
            first = first or exc  # IPv4's answer is the one to report
    assert first is not None
    err = from_os_error(first)
    raise OpError(err.code, f"cannot connect to port {port}: {first.strerror or first}")


async def _host_to_port(ch: Channel, writer: asyncio.StreamWriter) -> None:
    """Host bytes into the socket; ``eof in`` half-closes it."""
    while True:
        stream, data = await ch.recv()
        if stream is None:
            return  # the link closed
        if data is None:
            if writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
            return
        if data:
            writer.write(data)
            await writer.drain()  # bounded: the host waits for our credit


async def _port_to_host(link: Link, ch: Channel, reader: asyncio.StreamReader) -> None:
    """Socket bytes to the host, each chunk waiting for credit; then ``eof out``."""
    while True:
        chunk = await reader.read(BUF)
        if not chunk:
            await link.send({"t": P.EOF, "ch": ch.id, "s": "out"})
            return
        await ch.send_data("out", chunk)


async def op_port_connect(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    port = _port(args)
    timeout = args.get("timeout", CONNECT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise OpError("EINVAL", "'timeout' must be a positive number")
    reader, writer = await _connect(port, min(float(timeout), 60.0))
    try:
        await ch.send_event("connected")
        if payload:
            writer.write(payload)
            await writer.drain()
        up = asyncio.create_task(_host_to_port(ch, writer))
        down = asyncio.create_task(_port_to_host(link, ch, reader))
        try:
            # Done when the port stops sending (the host's half may stay open: an HTTP
            # server that answered and closed) or when the host goes away. When the
            # host's half ends first (its eof, or the port refusing more bytes), the
            # port's answer may still be coming.
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if not down.done() and not link.closed:
                await asyncio.wait({down})
            exc = down.exception() if down.done() and not down.cancelled() else None
            if isinstance(exc, OSError) and not link.closed:
                raise from_os_error(exc)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
    finally:
        writer.close()
    return {"port": port}, b""


async def op_list_ports(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    return await asyncio.to_thread(list_ports), b""


def make_handlers() -> dict[str, Handler]:
    return {"list_ports": op_list_ports, "port_connect": op_port_connect}
