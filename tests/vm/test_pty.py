"""Terminals (issue 12, section 2): a login shell on a real pty in the sandbox
(vm_images/supervisor/ops_pty.py), the host client (host/sandbox/pty.py), the vm
actions (host/vm/actions_pty.py), ``WS /vms/{key}/pty`` and ``agentvm vm shell``.

Real Docker, real supervisor, real HTTP server in a subprocess; keystrokes go in as
bytes and the test reads what the terminal prints back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from support import eventually
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from host.sandbox import Sandbox
from host.sandbox import pty as P
from host.sandbox.errors import ResourceLimit
from tests.server.live import ROOT, LiveServer, start_server
from tests.support.docker import remove_host
from vm_images.supervisor.protocol import WINDOW
from vm_images.supervisor.pty_term import READ_CHUNK, SCROLLBACK

from .conftest import HOST_ID

pytestmark = pytest.mark.docker


class Screen:
    """Collects a terminal's output in the background; ``expect`` polls for text."""

    def __init__(self, stream: P.TerminalStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for chunk in self.stream.output():
            self.buf += chunk

    async def expect(self, needle: bytes, timeout: float = 30.0) -> None:
        async def seen() -> bool:
            return needle in self.buf

        await eventually(seen, timeout=timeout, what=f"{needle!r} on the terminal")

    async def type(self, text: str) -> None:
        await self.stream.write(text.encode())

    async def close(self) -> None:
        await self.stream.detach()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, 30)


async def running(sandbox: Sandbox, argv: str) -> None:
    """Wait until a process with this command line runs (then it owns the terminal)."""
    want = argv.replace(" ", "\\x00") + "\\x00"
    probe = (
        "import os\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        f"        if open(f'/proc/{{p}}/cmdline', 'rb').read() == b'{want}': print('yes')\n"
        "    except OSError: pass\n"
    )

    async def found() -> bool:
        res = await sandbox.exec(["python3", "-c", probe], timeout=30)
        return "yes" in res.stdout

    await eventually(found, timeout=30, interval=0.05, what=f"{argv!r} running")


@contextlib.asynccontextmanager
async def live_vm(vm_host: Any, key: str) -> AsyncIterator[tuple[Any, Sandbox]]:
    async with vm_host() as h, h.manager.sandbox_for(h.engine, [key]) as sandbox:
        yield h, sandbox


async def test_shell_echo_resize_interrupt_jobs_and_curses(vm_host: Any) -> None:
    async with live_vm(vm_host, "pty-basics") as (h, sandbox):
        vm = h.client.vm.get(["pty-basics"])
        opened = await vm.call("open_terminal", {"cols": 80, "rows": 24})
        stream = await P.attach_terminal(sandbox, opened["id"])
        screen = Screen(stream)
        try:
            # Typed input is echoed by the pty, output computed by the shell.
            await screen.type("echo hi-$((40+2))\r")
            await screen.expect(b"hi-42")
            assert b"no job control" not in screen.buf  # bash has a controlling tty

            await stream.resize(100, 40)
            await screen.type("stty size\r")
            await screen.expect(b"40 100")

            # Ctrl-C: SIGINT to the foreground process group; the prompt comes back.
            await screen.type("sleep 100\r")
            await running(sandbox, "sleep 100")
            await screen.type("\x03")
            await screen.expect(b"^C")  # echoed; typed-ahead input was flushed before it
            await screen.type("echo rc-$?\r")
            await screen.expect(b"rc-130")

            # Job control: a background job, and a foreground one stopped by Ctrl-Z.
            await screen.type("sleep 101 &\r")
            await screen.type("sleep 102\r")
            await running(sandbox, "sleep 102")
            await screen.type("\x1a")
            await screen.expect(b"Stopped")
            await screen.type("jobs\r")
            await screen.expect(b"Running")
            await screen.type("kill %1 %2; echo killed-$((1+1))\r")
            await screen.expect(b"killed-2")

            # A full-screen program: curses sees the terminal's size, then exits on a key.
            curses = (
                'python3 -c "import curses; curses.wrapper(lambda s: (s.addstr(3, 5, '
                "'CURSES-OK %d %d' % s.getmaxyx()), s.refresh(), s.getch()))\"\r"
            )
            await screen.type(curses)
            await screen.expect(b"CURSES-OK 40 100")
            assert b"\x1b[?1049h" in screen.buf  # the alternate screen
            await screen.type("q")
            await screen.type("echo back-$((3+4))\r")
            await screen.expect(b"back-7")

            listed = await vm.call("list_terminals")
            assert [(t["id"], t["attached"], t["cols"]) for t in listed] == [
                (opened["id"], True, 100)
            ]
            # exit: the attachment ends with the shell's exit code.
            await screen.type("exit 3\r")
            await asyncio.wait_for(screen.task, 30)
            assert stream.end is not None and stream.end.exit_code == 3
        finally:
            await screen.close()


async def test_reattach_replays_scrollback_and_the_terminal_outlives_it(vm_host: Any) -> None:
    async with live_vm(vm_host, "pty-reattach") as (_, sandbox):
        term = await P.open_terminal(sandbox, cols=90, rows=30)
        first = Screen(await P.attach_terminal(sandbox, term["id"]))
        await first.type("echo marker-$((6*7))\r")
        await first.expect(b"marker-42")
        await first.close()
        assert first.stream.end is None  # detached, not exited

        # Nobody attached: the shell keeps running and its output goes to scroll-back.
        async def detached_output() -> int:
            (info,) = await P.list_terminals(sandbox)
            return info.output_bytes

        before = (await P.list_terminals(sandbox))[0]
        assert before.running and not before.attached
        await P.write_terminal(sandbox, term["id"], b"echo detached-$((5*5))\r")
        await eventually(detached_output, lambda n: n > before.output_bytes + 20)

        second = Screen(await P.attach_terminal(sandbox, term["id"]))
        try:
            await second.expect(b"detached-25")
            assert b"marker-42" in second.buf  # replayed from before the detach
            # A newer attach (a browser reload) takes over; the older one is told so.
            third = Screen(await P.attach_terminal(sandbox, term["id"]))
            await asyncio.wait_for(second.task, 30)
            assert second.stream.end is not None and second.stream.end.reason == "replaced"
            await third.expect(b"marker-42")
            await third.type("echo third-$((2*4))\r")
            await third.expect(b"third-8")
            await third.close()
        finally:
            await second.close()
        end = await P.close_terminal(sandbox, term["id"])
        assert end.exit_code is not None
        assert await P.list_terminals(sandbox) == []


async def test_flood_without_reader_keeps_host_buffers_bounded(vm_host: Any) -> None:
    """The attacker is the sandbox: ``yes`` floods its terminal. Attached but unread,
    the host holds at most the channel window and the program blocks; detached, the
    supervisor keeps only the scroll-back ring."""
    async with live_vm(vm_host, "pty-flood") as (_, sandbox):
        term = await P.open_terminal(sandbox)
        stream = await P.attach_terminal(sandbox, term["id"])
        await stream.write(b"yes flood-flood-flood\r")

        async def info() -> P.TerminalInfo:
            (t,) = await P.list_terminals(sandbox)
            return t

        seen = {"last": -1}

        def stuck(t: P.TerminalInfo) -> bool:
            """Blocked on the host, and nothing more read since the previous look."""
            same, seen["last"] = t.output_bytes == seen["last"], t.output_bytes
            return same and t.blocked and t.output_bytes >= WINDOW

        blocked = await eventually(info, stuck, timeout=60, interval=0.2, what="yes blocked")
        assert stream.buffered <= WINDOW
        # Everything the sandbox produced is the host's window plus one chunk in the
        # supervisor's hand (and the kernel's pty buffer): `yes` is blocked.
        assert blocked.output_bytes <= WINDOW + READ_CHUNK + 4096
        again = await info()
        assert again.blocked and again.output_bytes == blocked.output_bytes
        assert stream.buffered <= WINDOW

        # Detached: the pump reads on, keeping only the scroll-back ring.
        await stream.detach()
        flowing = await eventually(
            info, lambda t: not t.attached and t.output_bytes > 4 * WINDOW, timeout=60
        )
        assert flowing.scrollback == SCROLLBACK
        await P.write_terminal(sandbox, term["id"], b"\x03")
        await P.close_terminal(sandbox, term["id"])


async def test_limits_bad_input_and_idle_close(vm_host: Any) -> None:
    async with live_vm(vm_host, "pty-limits") as (h, sandbox):
        vm = h.client.vm.get(["pty-limits"])
        with pytest.raises(Exception) as bad:
            await vm.call("open_terminal", {"cols": 0})
        assert getattr(bad.value, "metadata", {}).get("field") == "cols"
        with pytest.raises(Exception) as unknown:
            await vm.call("close_terminal", "nope")
        assert "no such terminal" in str(unknown.value)

        # Idle-detached terminals are closed by the sandbox.
        idle = await P.open_terminal(sandbox, idle_timeout=0.5)

        async def ids() -> set[str]:
            return {t.id for t in await P.list_terminals(sandbox)}

        await eventually(ids, lambda found: idle["id"] not in found, timeout=30)

        opened = [await P.open_terminal(sandbox) for _ in range(8)]
        with pytest.raises(ResourceLimit):
            await P.open_terminal(sandbox)
        for t in opened:
            await P.close_terminal(sandbox, t["id"])


# -- over HTTP: WS /vms/{key}/pty and the CLI ---------------------------------------------

TOKEN = "pty-test-token-7f3a"


# One for the module: its tests use vm keys of their own.
@pytest.fixture(scope="module")
def pty_server(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    host_id = f"{HOST_ID}-pty"
    env = {"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0", "AGENTVM_VM_BUNDLES": '["common"]'}
    db = tmp_path_factory.mktemp("pty") / "host.db"
    server = start_server(db, token=TOKEN, env=env, registry=None, deadline_s=120)
    yield server
    server.stop()
    client = docker.from_env()
    remove_host(client, host_id)
    client.close()


def _ws_url(server: LiveServer, key: str, query: str = "") -> str:
    return (
        server.url.replace("http://", "ws://") + f"/vms/{key}/pty" + (f"?{query}" if query else "")
    )


async def _ws_expect(ws: Any, needle: bytes, seen: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got {bytes(seen[-500:])!r}")
        frame = await asyncio.wait_for(ws.recv(), left)
        if isinstance(frame, bytes):
            seen += frame


async def test_websocket_route_with_token_and_reattach(pty_server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # No token: refused before anything happens.
    with pytest.raises(WebSocketException):
        async with connect(_ws_url(pty_server, "pty-ws")) as ws:
            await ws.recv()
    # A cross-site page: refused by the browser guard, token or not.
    with pytest.raises(WebSocketException):
        async with connect(
            _ws_url(pty_server, "pty-ws"),
            additional_headers={**auth, "Origin": "https://evil.example"},
        ) as ws:
            await ws.recv()

    url = _ws_url(pty_server, "pty-ws", "cols=120&rows=33")
    async with connect(url, additional_headers=auth, open_timeout=120) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert hello["type"] == "attached" and hello["terminal"]
        terminal = hello["terminal"]
        seen = bytearray()
        await ws.send(b"stty size; echo ws-$((20+1))\r")
        await _ws_expect(ws, b"ws-21", seen)
        assert b"33 120" in seen
        await ws.send(json.dumps({"type": "resize", "cols": 70, "rows": 20}))
        await ws.send(b"stty size\r")
        await _ws_expect(ws, b"20 70", seen)
        await ws.send(json.dumps({"type": "bogus"}))
        await _ws_expect(ws, b"20 70", seen)  # ignored with an error frame, still open

    # Re-attach after the websocket went away: the scroll-back comes first.
    url = _ws_url(pty_server, "pty-ws", f"terminal={terminal}")
    async with connect(url, additional_headers=auth, open_timeout=60) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert hello == {"type": "attached", "terminal": terminal, "cols": 70, "rows": 20}
        seen = bytearray()
        await _ws_expect(ws, b"ws-21", seen)
        await ws.send(b"exit 5\r")
        with pytest.raises(ConnectionClosed):
            while True:
                frame = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(frame, str):
                    last = json.loads(frame)
        assert last == {"type": "exit", "terminal": terminal, "exit_code": 5}

    # An unknown terminal: an error frame naming it, then close code 4404.
    url = _ws_url(pty_server, "pty-ws", "terminal=nope")
    async with connect(url, additional_headers=auth) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert error["type"] == "error" and "nope" in error["error"]["message"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 60)
        assert ws.close_code == 4404
    # Bad size: 400-style error naming the field.
    url = _ws_url(pty_server, "pty-ws", "cols=0")
    async with connect(url, additional_headers=auth) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert error["error"]["metadata"]["field"] == "cols"


def _socket_buffers() -> int:
    """The most a TCP connection's two kernel buffers may hold on this machine."""
    names = ("tcp_rmem", "tcp_wmem")
    return sum(int(Path(f"/proc/sys/net/ipv4/{n}").read_text().split()[2]) for n in names)


async def test_websocket_client_that_stops_reading_blocks_the_flood(
    pty_server: LiveServer,
) -> None:
    """A client that does not read: the server's socket writes wait, the host's
    channel fills and the sandbox's ``yes`` blocks (output stops growing) instead of
    the host buffering it. Input still gets through: Ctrl-C ends the flood."""
    import httpx

    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = _ws_url(pty_server, "pty-wsflood")
    async with (
        connect(
            url,
            additional_headers=auth,
            open_timeout=120,
            max_queue=1,
            ping_interval=None,
            compression=None,  # bytes on the wire = terminal bytes (`yes` compresses 1000:1)
        ) as ws,
        httpx.AsyncClient(base_url=pty_server.url, headers=auth, timeout=60) as http,
    ):
        hello = json.loads(await asyncio.wait_for(ws.recv(), 120))
        assert hello["type"] == "attached"
        await ws.send(b"yes flood-flood-flood\r")

        async def info() -> dict[str, Any]:
            res = await http.post("/actors/vm/pty-wsflood/actions/list_terminals", json={})
            assert res.status_code == 200, res.text
            (t,) = res.json()["output"]
            return dict(t)

        seen = {"last": -1}

        def stuck(t: dict[str, Any]) -> bool:
            same, seen["last"] = t["output_bytes"] == seen["last"], t["output_bytes"]
            return same and t["blocked"] and t["attached"]

        blocked = await eventually(info, stuck, timeout=120, interval=0.2, what="yes blocked")
        # What `yes` got to write: the channel window, the server's write buffer, the
        # kernel's socket buffers (both ends) and the client's queued frames; nothing
        # grows with the flood.
        assert WINDOW <= blocked["output_bytes"] < WINDOW + _socket_buffers() + 8 * 2**20

        await ws.send(b"\x03")
        await ws.send(b"echo done-$((2+9))\r")
        tail = bytearray()
        while b"done-11" not in tail:
            frame = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(frame, bytes):
                tail = (tail + frame)[-4096:]


def _read_until(
    fd: int, needle: bytes, seen: bytearray, timeout: float = 120, start: int = 0
) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen[start:]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got {bytes(seen[-800:])!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"CLI ended before {needle!r}; got {bytes(seen[-800:])!r}")
            seen += chunk


def _cli(env: dict[str, str], *args: str) -> tuple[int, int]:
    """``agentvm vm shell ...`` with a pty as its terminal (the test is the terminal)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(ROOT)
        argv = [sys.executable, "-m", "host.cli", "vm", "shell", *args]
        os.execve(sys.executable, argv, env)
    return pid, fd


def test_cli_shell_in_raw_mode(pty_server: LiveServer) -> None:
    """``agentvm vm shell``: raw mode, resize, Ctrl-C, re-attach with ``--terminal``,
    the remote exit code, and the local terminal restored."""
    import fcntl
    import signal
    import struct
    import termios

    import httpx

    env = {**os.environ, "AGENTVM_URL": pty_server.url, "AGENTVM_TOKEN": TOKEN, "TERM": "xterm"}
    pids: list[int] = []
    fds: list[int] = []
    try:
        pid, fd = _cli(env, "pty-cli")
        pids.append(pid)
        fds.append(fd)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 111, 0, 0))
        seen = bytearray()
        _read_until(fd, b"$ ", seen)  # the remote prompt: the CLI is in raw mode
        assert not termios.tcgetattr(fd)[3] & termios.ICANON
        os.write(fd, b"echo cli-$((9*9)); stty size\r")
        _read_until(fd, b"cli-81", seen)
        _read_until(fd, b"31 111", seen)
        # Our window changes: the kernel sends the CLI SIGWINCH (as for a terminal
        # emulator's resize) and it resizes the remote terminal. The resize and the
        # next keys travel separately: ask until the size shows.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 77, 0, 0))
        deadline = time.monotonic() + 60
        while b"25 77" not in seen:
            assert time.monotonic() < deadline, bytes(seen[-800:])
            mark = len(seen)
            os.write(fd, b"stty size; echo sized-$((7*7))\r")
            _read_until(fd, b"sized-49", seen, start=mark)
        # Raw mode: Ctrl-C reaches the remote shell instead of killing the CLI.
        os.write(fd, b"echo go-$((1+2)); sleep 100\r")
        _read_until(fd, b"go-3", seen)
        os.write(fd, b"\x03")
        _read_until(fd, b"^C", seen)  # the remote line discipline echoes it
        os.write(fd, b"echo alive-$((8+8))\r")
        _read_until(fd, b"alive-16", seen)

        # The connection drops (the CLI dies): the terminal keeps running.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pids.remove(pid)
        with httpx.Client(
            base_url=pty_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as http:
            res = http.post("/actors/vm/pty-cli/actions/list_terminals", json={"args": []})
            assert res.status_code == 200, res.text
            (terminal,) = res.json()["output"]
        assert terminal["running"]

        pid, fd = _cli(env, "pty-cli", "--terminal", terminal["id"])
        pids.append(pid)
        fds.append(fd)
        again = bytearray()
        _read_until(fd, b"alive-16", again)  # the scroll-back, replayed
        os.write(fd, b"exit 4\r")
        _, status = os.waitpid(pid, 0)
        pids.remove(pid)
        assert os.waitstatus_to_exitcode(status) == 4  # the remote shell's exit code
        assert termios.tcgetattr(fd)[3] & termios.ICANON  # the terminal was restored
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in fds:
            os.close(fd)
