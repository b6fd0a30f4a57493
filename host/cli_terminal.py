"""``agentvm vm shell``: a raw-mode terminal on ``WS /vms/{key}/pty``.

The local terminal is put in raw mode (every key, Ctrl-C included, goes to the
remote shell), restored on the way out whatever happens; a local resize (SIGWINCH)
resizes the remote terminal. Leaving (the shell exits, or the connection drops)
prints how to re-attach: the remote terminal keeps running until it is closed or
idle-detached too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from orchestrator.keys import encode_key_path

from .cli_common import parse_key

READ_CHUNK = 64 * 1024
# Terminal output frames are at most the supervisor's chunk size (256 KiB).
MAX_FRAME = 1024 * 1024


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 80, 24
    return max(1, min(size.columns, 1000)), max(1, min(size.lines, 1000))


def pty_url(url: str, key: str, *, terminal: str | None, cwd: str | None) -> str:
    base = url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    cols, rows = _size()
    query: dict[str, Any] = {"cols": cols, "rows": rows}
    if terminal:
        query["terminal"] = terminal
    elif cwd:
        query["cwd"] = cwd
    return f"{base}/vms/{encode_key_path(parse_key(key))}/pty?{urlencode(query)}"


async def _stdin_ready(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def _keys(ws: ClientConnection, fd: int) -> None:
    """Local keystrokes to the remote terminal, one read at a time (never buffered)."""
    while True:
        await _stdin_ready(fd)
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            continue
        if not data:
            return
        await ws.send(data)


class _Outcome:
    def __init__(self) -> None:
        self.terminal: str | None = None
        self.exit_code: int | None = None
        self.message = ""


async def _screen(ws: ClientConnection, outcome: _Outcome) -> None:
    out = sys.stdout.buffer
    async for frame in ws:
        if isinstance(frame, bytes):
            out.write(frame)
            out.flush()
            continue
        msg = json.loads(frame)
        kind = msg.get("type")
        if kind == "attached":
            outcome.terminal = msg.get("terminal")
        elif kind == "exit":
            outcome.exit_code = int(msg.get("exit_code") or 0)
        elif kind == "detached":
            outcome.message = "another client took this terminal over"
        elif kind == "error":
            error = msg.get("error") or {}
            outcome.message = f"{error.get('group')}/{error.get('code')}: {error.get('message')}"


async def _session(url: str, token: str | None, outcome: _Outcome) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    loop = asyncio.get_running_loop()
    async with connect(url, additional_headers=headers, max_size=MAX_FRAME) as ws:
        resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue(maxsize=1)

        def on_winch() -> None:
            with contextlib.suppress(asyncio.QueueFull):
                resizes.put_nowait(_size())

        async def resizer() -> None:
            while True:
                cols, rows = await resizes.get()
                await ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

        loop.add_signal_handler(signal.SIGWINCH, on_winch)
        tasks = [
            asyncio.create_task(_screen(ws, outcome)),
            asyncio.create_task(_keys(ws, sys.stdin.fileno())),
            asyncio.create_task(resizer()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_signal_handler(signal.SIGWINCH)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task


def run_terminal(
    url: str, token: str | None, key: str, *, terminal: str | None, cwd: str | None
) -> int:
    """Run the terminal until the remote shell exits or the link drops; the exit code."""
    target = pty_url(url, key, terminal=terminal, cwd=cwd)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    outcome = _Outcome()
    failure = ""
    try:
        tty.setraw(fd, termios.TCSANOW)  # keep keys typed while connecting
        asyncio.run(_session(target, token, outcome))
    except InvalidStatus as exc:
        failure = f"the server refused the terminal: HTTP {exc.response.status_code}"
    except (OSError, WebSocketException) as exc:
        if not isinstance(exc, ConnectionClosed):
            failure = f"cannot reach agentvm at {url}: {exc}"
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    if failure or outcome.message:
        print(failure or outcome.message, file=sys.stderr)
    if outcome.exit_code is not None:
        return outcome.exit_code
    if outcome.terminal:
        print(
            f"detached from terminal {outcome.terminal} (it keeps running): "
            f"agentvm vm shell {key} --terminal {outcome.terminal}",
            file=sys.stderr,
        )
    return 1 if failure or outcome.message else 0
