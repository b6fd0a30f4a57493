"""Ports and file watches of a sandbox, over the supervisor link (docs/protocol.md).

- :func:`list_ports`: the TCP ports listening inside the sandbox.
- :func:`open_port`: a byte stream to ``127.0.0.1:<port>`` inside the sandbox (the
  ``port_connect`` op). Reads and writes are flow-controlled by the channel window
  (4 MiB at most in flight each way); every wait has a deadline here, so a port that
  accepts and then never answers costs a channel until ``idle_timeout``, not forever.
- :func:`watch`: file changes under a path as :class:`FileChange` batches (the
  ``watch`` op; coalesced and bounded in the supervisor, flow-controlled here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .client import SandboxClient
from .connection import Channel, LinkClosed
from .errors import SandboxError, SupervisorError

CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 60.0
# How many changes one watch frame may carry (the supervisor sends at most 256).
MAX_CHANGES_PER_FRAME = 1024
KINDS = frozenset({"created", "modified", "deleted", "overflow"})


class PortUnavailable(SandboxError):
    """Nothing accepts connections on that port inside the sandbox (HTTP 502)."""

    code = "port_unavailable"
    http_status = 502


class PortTimeout(SandboxError):
    """The port inside the sandbox did not answer in time (HTTP 504)."""

    code = "port_timeout"
    http_status = 504


@dataclass(frozen=True)
class ListeningPort:
    port: int
    address: str
    pid: int | None = None
    process: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "address": self.address,
            "pid": self.pid,
            "process": self.process,
        }


@dataclass(frozen=True)
class FileChange:
    """``kind``: created | modified | deleted | overflow (changes were dropped: rescan)."""

    path: str
    kind: str
    dropped: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind}
        if self.kind == "overflow":
            out["dropped"] = self.dropped
            out["reason"] = self.reason
        return out


def check_port(port: Any) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise SupervisorError("port must be an integer from 1 to 65535", code="EINVAL")
    return port


async def list_ports(client: SandboxClient) -> list[ListeningPort]:
    """The sandbox's listening TCP ports (the supervisor's own forwarders left out)."""
    value = (await client._call("list_ports")).value
    ports: list[ListeningPort] = []
    for entry in value if isinstance(value, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("port"), int):
            continue
        pid = entry.get("pid")
        process = entry.get("process")
        ports.append(
            ListeningPort(
                port=int(entry["port"]),
                address=str(entry.get("address", ""))[:64],
                pid=pid if isinstance(pid, int) else None,
                process=str(process)[:64] if isinstance(process, str) else None,
            )
        )
    return ports


class PortStream:
    """One TCP connection inside the sandbox, as an async byte stream."""

    def __init__(self, client: SandboxClient, channel: Channel, port: int, idle: float) -> None:
        self.client = client
        self.channel = channel
        self.port = port
        self.idle = idle
        # Reads may wait without a deadline where the peer is a live client that can
        # leave (a WebSocket: quiet for minutes is normal); the link's own liveness
        # check still catches a frozen sandbox.
        self.read_idle: float | None = idle
        self.eof = False

    async def read(self) -> bytes:
        """The next bytes the port sent; ``b""`` once it closed its side."""
        if self.eof:
            return b""
        try:
            async with asyncio.timeout(self.read_idle):
                while True:
                    kind, a, b = await self.channel.next()
                    if kind == "data" and b:
                        return bytes(b)
                    if kind == "result":
                        self.eof = True
                        Channel.check(a, b, {})
                        return b""
        except TimeoutError:
            await self.close()
            raise PortTimeout(
                f"port {self.port} sent nothing for {self.idle:g}s", port=self.port
            ) from None
        except LinkClosed as exc:
            self.eof = True
            raise self.client._lost(exc) from exc

    async def write(self, data: bytes) -> None:
        """Send bytes to the port (waits for the channel's credit, at most ``idle``)."""
        if not data or self.channel.finished:
            return
        try:
            async with asyncio.timeout(self.idle):
                await self.channel.send_data("in", data)
        except TimeoutError:
            await self.close()
            raise PortTimeout(
                f"port {self.port} took nothing for {self.idle:g}s", port=self.port
            ) from None
        except LinkClosed as exc:
            raise self.client._lost(exc) from exc
        except ConnectionError:
            pass  # the call ended (the port closed): reads say so

    async def write_eof(self) -> None:
        if not self.channel.finished:
            with contextlib.suppress(ConnectionError):
                await self.channel.send_eof("in")

    async def close(self) -> None:
        """Drop the connection (the supervisor closes its socket)."""
        self.eof = True
        if not self.channel.finished:
            await self.channel.cancel()
            self.channel.finished = True


async def open_port(
    client: SandboxClient,
    port: int,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
) -> PortStream:
    """Connect to ``port`` inside the sandbox; :class:`PortUnavailable` if nothing
    listens there, :class:`PortTimeout` if the connect takes longer than allowed."""
    port = check_port(port)
    channel = await client._open("port_connect", {"port": port, "timeout": connect_timeout})
    try:
        # The supervisor's own connect deadline plus a margin for the round trip.
        async with asyncio.timeout(connect_timeout + 5.0):
            kind, a, b = await channel.next()
    except TimeoutError:
        await channel.cancel()
        raise PortTimeout(f"connecting to port {port} timed out", port=port) from None
    except LinkClosed as exc:
        raise client._lost(exc) from exc
    except asyncio.CancelledError:
        await channel.cancel()
        raise
    if kind == "result":
        try:
            Channel.check(a, b, {})
        except SupervisorError as exc:
            if exc.errno_name == "ETIMEDOUT":
                raise PortTimeout(exc.message, port=port) from None
            if exc.errno_name in ("EINVAL", "EAGAIN", "ENOSYS"):
                raise
            raise PortUnavailable(
                f"nothing accepts connections on port {port} in the sandbox ({exc.message})",
                port=port,
                errno=exc.errno_name,
            ) from None
        raise PortUnavailable(f"port {port} closed at once", port=port)
    return PortStream(client, channel, port, idle_timeout)


async def watch(
    client: SandboxClient,
    path: str,
    *,
    recursive: bool = True,
    mode: str = "auto",
    interval: float | None = None,
    started: asyncio.Future[dict[str, Any]] | None = None,
) -> AsyncIterator[list[FileChange]]:
    """Batches of changes under ``path`` until the caller stops iterating (which
    cancels the watch in the sandbox). ``started`` resolves to ``{mode, path}`` once
    the supervisor watches (an error for a missing path is raised before)."""
    args: dict[str, Any] = {"path": path, "recursive": recursive, "mode": mode}
    if interval is not None:
        args["interval"] = interval
    channel = await client._open("watch", args)
    try:
        while True:
            try:
                kind, a, b = await channel.next()
            except LinkClosed as exc:
                raise client._lost(exc) from exc
            if kind == "event" and a.get("kind") == "started":
                if started is not None and not started.done():
                    started.set_result({"mode": a.get("mode"), "path": a.get("path")})
            elif kind == "data":
                batch = _changes(b)
                if batch:
                    yield batch
            elif kind == "result":
                Channel.check(a, b, {})
                return
    finally:
        if not channel.finished:
            await channel.cancel()


def _text(value: str) -> str:
    """A file name that is not UTF-8 arrives with lone surrogates (the supervisor's
    ``fsdecode``): shown with U+FFFD, so every JSON writer downstream can encode it."""
    try:
        raw = value.encode("utf-8", "surrogateescape")  # the name's own bytes
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _changes(raw: bytes) -> list[FileChange]:
    """A frame of changes; entries that are not well-formed are skipped (the sandbox
    wrote them)."""
    try:
        items = json.loads(raw)
    except ValueError:
        return []
    out: list[FileChange] = []
    for item in items[:MAX_CHANGES_PER_FRAME] if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        path, kind = item.get("path"), item.get("kind")
        if not isinstance(path, str) or kind not in KINDS:
            continue
        dropped = item.get("dropped")
        reason = item.get("reason")
        out.append(
            FileChange(
                path=_text(path[:4096]),
                kind=str(kind),
                dropped=dropped if isinstance(dropped, int) else None,
                reason=reason[:200] if isinstance(reason, str) else None,
            )
        )
    return out
