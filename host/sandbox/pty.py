"""Terminals in a sandbox: the host end of the supervisor's ``pty_*`` operations.

A terminal is a login shell on a real pty inside the sandbox (``ops_pty.py``). It
keeps running when nobody is attached; :func:`attach_terminal` replays its
scroll-back (at most 256 KiB, held by the supervisor) and then streams live output.
What the host holds per attached terminal is bounded by the channel window (4 MiB):
a consumer that stops reading stops the supervisor's pump, and the program in the
terminal blocks on its writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import BaseModel

from vm_images.supervisor.protocol import CHUNK

from .client import SandboxClient
from .connection import Channel, LinkClosed
from .errors import SupervisorError

# Deadline of every short terminal call (open, input, resize, list); closing waits
# for the hang-up (the supervisor gives the shell 2 s before SIGKILL).
CALL_TIMEOUT = 30.0
CLOSE_TIMEOUT = 30.0


class TerminalInfo(BaseModel):
    """One terminal as ``pty_list`` reports it."""

    id: str
    pid: int
    argv: list[str]
    cols: int
    rows: int
    running: bool
    exit_code: int | None = None
    attached: bool
    created_at: float
    idle_timeout: float
    scrollback: int
    output_bytes: int
    blocked: bool
    detached_for: float | None = None


class TerminalEnd(BaseModel):
    """How an attachment ended: the terminal exited (``exit_code``) or this side was
    detached (``reason``: ``detached``, or ``replaced`` by a newer attach)."""

    id: str
    exit_code: int | None = None
    detached: bool = False
    reason: str | None = None


async def _call(
    client: SandboxClient, op: str, args: dict[str, Any], payload: bytes = b"", timeout: float = 0
) -> Any:
    async with asyncio.timeout(timeout or CALL_TIMEOUT):
        return (await client._call(op, args, payload)).value


async def open_terminal(
    client: SandboxClient,
    *,
    cols: int = 80,
    rows: int = 24,
    command: str | list[str] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    idle_timeout: float | None = None,
) -> dict[str, Any]:
    """Start a terminal (a login shell, or ``command``) → ``{id, pid, cols, rows}``."""
    args: dict[str, Any] = {"cols": cols, "rows": rows}
    if isinstance(command, str):
        args["command"] = command
    elif command is not None:
        args["argv"] = list(command)
    if cwd is not None:
        args["cwd"] = cwd
    if env:
        args["env"] = dict(env)
    if idle_timeout is not None:
        args["idle_timeout"] = idle_timeout
    value: dict[str, Any] = await _call(client, "pty_open", args)
    return value


async def list_terminals(client: SandboxClient) -> list[TerminalInfo]:
    return [TerminalInfo.model_validate(t) for t in await _call(client, "pty_list", {})]


async def close_terminal(client: SandboxClient, terminal: str) -> TerminalEnd:
    """Hang the terminal up (SIGHUP, then SIGKILL) and forget it."""
    value = await _call(client, "pty_close", {"id": terminal}, timeout=CLOSE_TIMEOUT)
    return TerminalEnd.model_validate(value)


async def resize_terminal(client: SandboxClient, terminal: str, cols: int, rows: int) -> None:
    await _call(client, "pty_resize", {"id": terminal, "cols": cols, "rows": rows})


async def write_terminal(client: SandboxClient, terminal: str, data: bytes) -> None:
    """Keystrokes without an attachment (one call per 256 KiB, each with a deadline)."""
    for start in range(0, max(len(data), 1), CHUNK):
        await _call(client, "pty_input", {"id": terminal}, data[start : start + CHUNK])


class TerminalStream:
    """One attachment: iterate :meth:`output`; :meth:`write` keystrokes, :meth:`resize`.

    Leaving :meth:`output` (or :meth:`detach`) detaches; the terminal keeps running."""

    def __init__(self, client: SandboxClient, channel: Channel, attached: dict[str, Any]) -> None:
        self.client = client
        self.channel = channel
        self.id = str(attached["id"])
        self.pid = int(attached["pid"])
        self.cols = int(attached["cols"])
        self.rows = int(attached["rows"])
        self.end: TerminalEnd | None = None

    @property
    def buffered(self) -> int:
        """Output bytes received from the sandbox and not yet taken (<= the window)."""
        return self.channel.unconsumed

    async def output(self) -> AsyncIterator[bytes]:
        """Terminal output (scroll-back first) until the terminal exits or we detach."""
        try:
            while True:
                try:
                    kind, a, b = await self.channel.next()
                except LinkClosed as exc:
                    raise self.client._lost(exc) from exc
                if kind == "data" and a == "out":
                    yield b
                elif kind == "result":
                    self.end = TerminalEnd.model_validate(Channel.check(a, b, {}).value)
                    return
        finally:
            await self.detach()

    async def write(self, data: bytes) -> None:
        """Keystrokes (waits for the channel's credit, never buffers more)."""
        if data and not self.channel.finished:
            await self._send("in", data)

    async def resize(self, cols: int, rows: int) -> None:
        if not self.channel.finished:
            await self._send("resize", f"{int(cols)} {int(rows)}".encode())
            self.cols, self.rows = cols, rows

    async def _send(self, stream: str, data: bytes) -> None:
        try:
            await self.channel.send_data(stream, data)
        except LinkClosed as exc:
            raise self.client._lost(exc) from exc
        except ConnectionError:
            pass  # the attachment ended meanwhile (exit or replaced)

    async def detach(self) -> None:
        """Stop listening; the terminal keeps running (re-attach later)."""
        if not self.channel.finished:
            await self.channel.cancel()


async def attach_terminal(
    client: SandboxClient,
    terminal: str,
    *,
    cols: int | None = None,
    rows: int | None = None,
    replace: bool = True,
) -> TerminalStream:
    """Attach to a terminal (taking it over from an older attachment unless
    ``replace=False``, then ``EBUSY``); resizes it first when ``cols``/``rows``."""
    args: dict[str, Any] = {"id": terminal, "replace": replace}
    if cols is not None:
        args["cols"] = cols
    if rows is not None:
        args["rows"] = rows
    channel = await client._open("pty_attach", args)
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            kind, a, b = await channel.next()
    except LinkClosed as exc:
        raise client._lost(exc) from exc
    except BaseException:
        await channel.cancel()
        raise
    if kind == "result":
        Channel.check(a, b, {})  # raises the typed error (ESRCH, EBUSY, EINVAL)
        raise SupervisorError("terminal attach ended before it started", code="EIO")
    if kind != "event" or a.get("kind") != "attached":
        await channel.cancel()
        raise SupervisorError(f"unexpected first frame on a terminal attach: {kind}", code="EIO")
    try:
        return TerminalStream(client, channel, a)
    except (KeyError, TypeError, ValueError) as exc:  # the supervisor is not to be trusted
        await channel.cancel()
        raise SupervisorError(f"malformed terminal attach: {exc}", code="EIO") from exc
