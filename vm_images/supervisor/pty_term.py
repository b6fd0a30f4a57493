"""Terminals: a login shell on a real pseudo-terminal, kept across host reconnects.

The shell runs in its own session with the pty as its controlling terminal, so the
kernel's line discipline does the rest: Ctrl-C is SIGINT to the foreground process
group, a resize (TIOCSWINSZ) is SIGWINCH, job control and full-screen programs
work. Output goes to a bounded scroll-back ring (replayed on re-attach) and, while
a host listens, to its channel with flow control: a host that does not read blocks
the pump, so the program blocks on its terminal instead of anything piling up.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import OpError
from .procs import HOME, build_argv, build_env, exit_code_of, kill_tree, resolve
from .reaper import Reaper
from .tasks import background

# Open (running) terminals per sandbox; more is EAGAIN.
MAX_TERMINALS = 8
# Exited terminals remembered (their scroll-back and exit code) until re-attached,
# closed, or idle too long.
KEEP_EXITED = 8
# Scroll-back bytes kept per terminal (replayed to whoever attaches).
SCROLLBACK = 256 * 1024
READ_CHUNK = 64 * 1024
# Default seconds a terminal may stay detached before it is closed (the host passes
# its own setting with each open).
DEFAULT_IDLE = 3600.0
IDLE_TICK = 1.0
# After the shell exits: output still read while it flows, at most this long.
EXIT_DRAIN_MAX = 2.0
DRAIN_QUIET = 0.25
# Closing: SIGHUP first (what a hang-up means to a shell), SIGKILL after this.
CLOSE_GRACE = 2.0
MAX_DIMENSION = 1000

# The child side: make the pty our controlling terminal (we are a new session's
# leader: Popen's start_new_session), then become the shell. A separate program
# rather than a preexec_fn, so no Python runs in the forked copy of the supervisor.
LAUNCH = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as exc:\n"
    "    sys.stderr.write(f'{sys.argv[1]}: {exc.strerror}\\r\\n')\n"
    "    sys.exit(127)\n"
)

Sink = Callable[[bytes], Awaitable[None]]


def check_size(args: dict[str, Any], *, required: bool) -> tuple[int, int] | None:
    """``(cols, rows)`` from the call's args; EINVAL naming the bad one."""
    cols, rows = args.get("cols"), args.get("rows")
    if cols is None and rows is None and not required:
        return None
    cols = 80 if cols is None else cols
    rows = 24 if rows is None else rows
    for name, value in (("cols", cols), ("rows", rows)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise OpError("EINVAL", f"'{name}' must be an integer")
        if not 1 <= value <= MAX_DIMENSION:
            raise OpError("EINVAL", f"'{name}' must be between 1 and {MAX_DIMENSION}")
    return cols, rows


def _login_shell() -> list[str]:
    return ["/bin/bash", "-l"] if os.path.exists("/bin/bash") else ["/bin/sh", "-l"]


async def _fd_ready(fd: int, *, write: bool = False) -> None:
    """Wait until ``fd`` is readable (or writable) without a thread."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class Listener:
    """The channel currently attached to a terminal (at most one)."""

    def __init__(self, sink: Sink, link: Any) -> None:
        self.sink = sink
        self.link = link
        self.kicked = asyncio.Event()


class Terminal:
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        master: int,
        argv: list[str],
        size: tuple[int, int],
        exited: asyncio.Future[int],
        idle_timeout: float,
    ) -> None:
        self.id = secrets.token_hex(6)
        self.popen = popen
        self.pid = popen.pid
        self.master = master
        self.argv = argv
        self.cols, self.rows = size
        self.exited = exited
        self.idle_timeout = idle_timeout
        self.created_at = time.time()
        self.exit_code: int | None = None
        self.ring = bytearray()
        self.total = 0  # bytes ever read; ring holds [total - len(ring), total)
        # The attach that owns the terminal (``claim``) gets live output (``listener``)
        # once it has replayed the scroll-back.
        self.claim: Listener | None = None
        self.listener: Listener | None = None
        self.detached_at: float | None = time.monotonic()
        self.blocked = False  # the pump waits for the host to take output
        # Attaches replaying the scroll-back: the pump waits meanwhile, so a flood
        # cannot outrun a replay (which would then never catch up and go live).
        self.replays = 0
        self.no_replay = asyncio.Event()
        self.no_replay.set()
        self.write_lock = asyncio.Lock()
        self.pump: asyncio.Task[None] | None = None
        self.closing = False
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def base(self) -> int:
        return self.total - len(self.ring)

    def has_listener(self) -> bool:
        """Someone is attached (or attaching); a dead link's listener does not count."""
        lst = self.claim
        if lst is not None and getattr(lst.link, "closed", False):
            self.detach(lst)
        return self.claim is not None

    def detach(self, listener: Listener) -> None:
        if self.listener is listener:
            self.listener = None
        if self.claim is listener:
            self.claim = None
            self.detached_at = time.monotonic()

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "argv": self.argv,
            "cols": self.cols,
            "rows": self.rows,
            "running": self.exit_code is None,
            "exit_code": self.exit_code,
            "attached": self.has_listener(),
            "created_at": self.created_at,
            "idle_timeout": self.idle_timeout,
            "scrollback": len(self.ring),
            "output_bytes": self.total,
            "blocked": self.blocked,
        }

    def resize(self, cols: int, rows: int) -> None:
        """TIOCSWINSZ; the kernel sends SIGWINCH to the foreground process group."""
        self.cols, self.rows = cols, rows
        if self.master >= 0:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def write(self, data: bytes) -> None:
        """Keystrokes into the terminal; waits (never blocks the loop) while it is full."""
        async with self.write_lock:
            view = memoryview(data)
            while view and self.master >= 0:
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    await _fd_ready(self.master, write=True)
                    continue
                except OSError as exc:  # EIO: the shell and everything on the pty left
                    raise OpError("EPIPE", f"terminal {self.id} is closed") from exc
                view = view[n:]

    def replay_started(self) -> None:
        self.replays += 1
        self.no_replay.clear()

    def replay_ended(self) -> None:
        self.replays -= 1
        if self.replays == 0:
            self.no_replay.set()

    def _record(self, data: bytes) -> None:
        self.ring += data
        self.total += len(data)
        over = len(self.ring) - SCROLLBACK
        if over > 0:
            del self.ring[:over]

    async def run_pump(self) -> None:
        """Read the pty into the ring and to the listener until the pty hangs up."""
        while True:
            if not self.no_replay.is_set():
                self.blocked = True
                try:
                    await self.no_replay.wait()
                finally:
                    self.blocked = False
            try:
                data = os.read(self.master, READ_CHUNK)
            except BlockingIOError:
                await _fd_ready(self.master)
                continue
            except OSError:  # EIO: every slave fd is closed
                return
            if not data:
                return
            self._record(data)
            listener = self.listener
            if listener is None:
                continue
            self.blocked = True
            try:
                await listener.sink(data)
            except ConnectionError:
                self.detach(listener)  # the host went away; the terminal keeps running
            finally:
                self.blocked = False


class TerminalTable:
    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.terms: dict[str, Terminal] = {}
        self._idle_task: asyncio.Task[None] | None = None

    def running(self) -> list[Terminal]:
        return [t for t in self.terms.values() if t.exit_code is None]

    def get(self, term_id: Any) -> Terminal:
        term = self.terms.get(term_id) if isinstance(term_id, str) else None
        if term is None:
            raise OpError("ESRCH", f"no such terminal: {term_id}")
        return term

    def open(self, args: dict[str, Any]) -> Terminal:
        if len(self.running()) >= MAX_TERMINALS:
            raise OpError("EAGAIN", f"at most {MAX_TERMINALS} terminals may be open per vm")
        size = check_size(args, required=True)
        assert size is not None
        idle = args.get("idle_timeout", DEFAULT_IDLE)
        if not isinstance(idle, int | float) or isinstance(idle, bool) or idle <= 0:
            raise OpError("EINVAL", "'idle_timeout' must be a positive number of seconds")
        has_command = args.get("command") is not None or args.get("argv") is not None
        argv = build_argv(args) if has_command else _login_shell()
        env = build_env(args.get("env"))
        cwd = resolve(str(args.get("cwd") or HOME))
        if not os.path.isdir(cwd):
            raise OpError("ENOENT", f"working directory not found: {cwd}", cwd)
        master, slave = os.openpty()
        try:
            cols, rows = size
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LAUNCH, *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except BlockingIOError as exc:
            os.close(master)
            raise OpError("EAGAIN", f"cannot start a terminal: {exc.strerror}") from exc
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the child has its copies; EIO on master once they all close
        # Right after the fork, before the loop runs: the reaper cannot miss it.
        exited = self.reaper.watch(popen.pid)
        os.set_blocking(master, False)
        term = Terminal(popen, master, argv, size, exited, float(idle))
        self.terms[term.id] = term
        term.pump = asyncio.create_task(term.run_pump())
        background(self._finish(term))
        if self._idle_task is None or self._idle_task.done():
            self._idle_task = background(self._idle_loop())
        return term

    async def _finish(self, term: Terminal) -> None:
        status = await term.exited
        term.popen.returncode = status  # reaped already (no waitpid later)
        assert term.pump is not None
        # Output the shell wrote just before it exited: read while it flows (a
        # background job may hold the pty open: it is ended below).
        started = time.monotonic()
        while not term.pump.done() and time.monotonic() - started < EXIT_DRAIN_MAX:
            seen = term.total
            await asyncio.wait({term.pump}, timeout=DRAIN_QUIET)
            if term.total == seen and not term.blocked:
                break
        term.pump.cancel()
        await asyncio.wait({term.pump})
        kill_tree(term.pid)  # what is left of the terminal's session
        os.close(term.master)
        term.master = -1
        term.exit_code = exit_code_of(status)
        term.done.set_result(term.exit_code)
        self._forget_old()

    def _forget_old(self) -> None:
        exited = [t for t in self.terms.values() if t.exit_code is not None]
        for t in exited[: max(0, len(exited) - KEEP_EXITED)]:
            self.terms.pop(t.id, None)

    async def close(self, term: Terminal) -> int:
        """Hang up the terminal (SIGHUP, then SIGKILL) and forget it; its exit code."""
        term.closing = True
        if term.exit_code is None:
            kill_tree(term.pid, signal.SIGHUP)
            try:
                await asyncio.wait_for(asyncio.shield(term.done), CLOSE_GRACE)
            except TimeoutError:
                kill_tree(term.pid)
        code = await asyncio.shield(term.done)
        self.terms.pop(term.id, None)
        if term.claim is not None:
            term.claim.kicked.set()
        return code

    async def _idle_loop(self) -> None:
        """Close terminals nobody attached to for their idle timeout."""
        while self.terms:
            await asyncio.sleep(IDLE_TICK)
            now = time.monotonic()
            for term in list(self.terms.values()):
                if term.closing or term.has_listener() or term.detached_at is None:
                    continue
                if now - term.detached_at > term.idle_timeout:
                    background(self.close(term))

    def kill_all(self) -> None:
        for term in self.running():
            kill_tree(term.pid)
