"""Starting, watching and killing processes inside the sandbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import protocol as P
from .egress import egress_env
from .errors import OpError
from .gateway import gateway_port
from .reaper import Reaper
from .tasks import background

HOME = os.environ.get("HOME") or "/home/user"
BASE_ENV = {
    "HOME": HOME,
    "USER": "user",
    "LOGNAME": "user",
    "SHELL": "/bin/bash",
    "PATH": "/home/user/.local/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    "LANG": "C.UTF-8",
    "TERM": "xterm-256color",
    # The host's LLM gateway through the loopback forwarder (docs/gateway.md); the
    # placeholder key tells the gateway to inject the host's key.
    "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{gateway_port()}",
    "ANTHROPIC_API_KEY": P.GATEWAY_PLACEHOLDER_KEY,
    # Allowlist vms: the host's egress proxy and git credential helper (docs/egress.md).
    **egress_env(),
}
# Output kept per stream for a process nobody is attached to.
TAIL_LIMIT = 256 * 1024
READ_CHUNK = 256 * 1024
# stdout kept for a `retain` process until the host acknowledges it; when full, we stop
# reading the pipe (the process blocks on write) rather than drop anything.
RETAIN_LIMIT = 8 * 1024 * 1024
# Exited processes remembered for wait/list.
KEEP_EXITED = 256
# After the main process exits, how long output may be quiet before the pipes are dropped.
DRAIN_GRACE = 0.25
# An exec's output is collected at most this long after its main process exited, even
# if a background child keeps writing (the call must end).
EXEC_DRAIN_MAX = 2.0
# A tracked exec's child waits in this wrapper until the host moved it into its own
# cgroup: the gate is the child's stdin, and the supervisor writes one line to it
# (then the exec's input, if any); EOF instead means "give up". The shell reads a pipe
# a byte at a time, so the command gets exactly the bytes after that line. Not a
# separate pipe: /bin/sh (dash) cannot name an fd above 9 in a redirection, and
# once the supervisor's fds 0-9 were in use every timed exec died "Bad fd number".
GATE_SCRIPT = 'read -r _ || exit 125; exec "$@"'

Sink = Callable[[str, bytes], Awaitable[None]]


def resolve(path: str) -> str:
    """Relative paths resolve against the home directory."""
    return path if os.path.isabs(path) else os.path.join(HOME, path)


def build_argv(args: dict[str, Any]) -> list[str]:
    command = args.get("command")
    argv = args.get("argv")
    if isinstance(command, str):
        return ["/bin/bash", "-c", command]
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return argv
    raise OpError("EINVAL", "need a non-empty 'argv' list of strings or a 'command' string")


def _inherited() -> dict[str, str]:
    """The container's environment (its image and vm options), minus our internals."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTVM_")}


def build_env(extra: Any) -> dict[str, str]:
    env = {**BASE_ENV, **_inherited()}
    if extra:
        if not isinstance(extra, dict):
            raise OpError("EINVAL", "'env' must be an object of strings")
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def exit_code_of(status: int) -> int:
    """Shell convention: a signal-killed process reports 128 + signal number."""
    return 128 - status if status < 0 else status


def _cannot_run(name: str, path: str, cwd: str) -> str:
    """The message Popen's failure would give when ``name`` cannot be executed, else ""."""
    if "/" in name:
        target = name if os.path.isabs(name) else os.path.join(cwd, name)
        if not os.path.exists(target):
            return f"{name}: command not found\n"
        if os.path.isdir(target) or not os.access(target, os.X_OK):
            return f"{name}: permission denied\n"
        return ""
    found = shutil.which(name, path=path)
    return "" if found else f"{name}: command not found\n"


def open_gate(proc: Proc, go: bool = True) -> None:
    """Let a gated child run (``go``) or make it exit 125 without running anything.

    A child that died meanwhile is no error here: its exit is the exec's result."""
    if not proc.gated:
        return
    proc.gated = False
    assert proc.stdin is not None  # gated children always get a stdin pipe
    if go:
        proc.stdin.write(b"\n")  # one byte into an empty pipe: never blocks
    else:
        proc.stdin.close()


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group and session led by ``pid`` (what a timeout must end).

    A few passes, because members may still be forking while the first lands.
    """
    for _ in range(3):
        found = False
        try:
            os.killpg(pid, sig)
            found = True
        except (ProcessLookupError, PermissionError):
            pass
        # Children that moved to their own process group keep the session id.
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
                if int(fields[3]) == pid:  # field 6 overall: session id
                    os.kill(int(entry), sig)
                    found = True
            except (OSError, IndexError, ValueError):
                continue
        if not found or sig != signal.SIGKILL:
            return


class Proc:
    """One started process: its pipes, its exit, and where its output goes."""

    def __init__(
        self, popen: subprocess.Popen[bytes], argv: list[str], exited: asyncio.Future[int]
    ):
        self.popen = popen
        self.pid = popen.pid
        self.argv = argv
        self.started_at = time.time()
        self.exited = exited
        self.exit_code: int | None = None
        self.sink: Sink | None = None
        # The host link the sink sends on (``closed`` once the host is gone): a
        # listener whose link died is no listener (a re-attach after a crash takes over).
        self.listener: Any = None
        self.tails: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.pumps: list[asyncio.Task[None]] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.bytes_read = 0
        self.sink_busy = 0
        self.stdin: asyncio.StreamWriter | None = None
        # `retain` processes: stdout bytes [out_base, out_base + len(retained)) are kept
        # until `ack_output`, so a host that died mid-stream can replay from its offset.
        self.retain = False
        self.out_base = 0
        self.retained = bytearray()
        self.acked = asyncio.Event()
        self.done = asyncio.get_running_loop().create_future()  # exit + output drained
        # Seconds of output collected after the exit at most (None: while it flows).
        self.drain_limit: float | None = None
        # A tracked exec's child waiting for its first stdin line (open_gate).
        self.gated = False

    def has_listener(self) -> bool:
        """A live host listens to the output (a dead link's sink does not count)."""
        if self.sink is None:
            return False
        if self.listener is not None and getattr(self.listener, "closed", False):
            self.sink = self.listener = None
            return False
        return True

    def info(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "argv": self.argv,
            "running": self.exit_code is None,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
        }


async def _reader_for(pipe: Any) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK * 2, loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


async def _writer_for(pipe: Any) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)


def _blocked_on_sink(proc: Proc) -> bool:
    """True while a pump waits for the host to take output (slow reader, not silence)."""
    return proc.sink_busy > 0


class ProcessTable:
    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.procs: dict[int, Proc] = {}

    def start(
        self, args: dict[str, Any], stdin: bool, listed: bool = True, gated: bool = False
    ) -> tuple[Proc | None, str]:
        """Fork the process; ``(None, message)`` when the binary cannot run.

        ``listed=False`` for exec and internal children: they are not the
        spawn/wait/kill family's processes and never show in ``list_processes``.
        ``gated``: the child waits before it runs anything until :func:`open_gate`
        (it gets a stdin pipe: the gate; the caller closes it after any input).
        """
        argv = build_argv(args)
        env = build_env(args.get("env"))
        cwd = resolve(str(args.get("cwd") or HOME))
        if not os.path.isdir(cwd):
            raise OpError("ENOENT", f"working directory not found: {cwd}", cwd)
        run = argv
        if gated:
            missing = _cannot_run(argv[0], env.get("PATH", ""), cwd)
            if missing:
                return None, missing
            run = ["/bin/sh", "-c", GATE_SCRIPT, "sh", *argv]
        try:
            popen = subprocess.Popen(
                run,
                stdin=subprocess.PIPE if stdin or gated else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,  # own session + group: a timeout kills them all
            )
        except FileNotFoundError:
            return None, f"{argv[0]}: command not found\n"
        except PermissionError:
            return None, f"{argv[0]}: permission denied\n"
        except BlockingIOError as exc:
            # fork() failing with EAGAIN: the pids limit is reached.
            raise OpError("EAGAIN", f"cannot start a process: {exc.strerror}") from exc
        proc = Proc(popen, argv, self.reaper.watch(popen.pid))
        proc.gated = gated
        if listed:
            self.procs[proc.pid] = proc
        return proc, ""

    async def attach_pipes(self, proc: Proc) -> None:
        """Start pumping the process's output to its sink (or its tail buffers)."""
        assert proc.popen.stdout is not None and proc.popen.stderr is not None
        if proc.popen.stdin is not None:
            proc.stdin = await _writer_for(proc.popen.stdin)
        for stream, pipe in (("stdout", proc.popen.stdout), ("stderr", proc.popen.stderr)):
            reader, transport = await _reader_for(pipe)
            proc.transports.append(transport)
            proc.pumps.append(asyncio.create_task(self._pump(proc, stream, reader)))
        background(self._finish(proc))

    async def _pump(self, proc: Proc, stream: str, reader: asyncio.StreamReader) -> None:
        retaining = proc.retain and stream == "stdout"
        while True:
            while retaining and len(proc.retained) >= RETAIN_LIMIT:
                proc.sink_busy += 1  # waiting for the host, not silent
                try:
                    proc.acked.clear()
                    await proc.acked.wait()
                finally:
                    proc.sink_busy -= 1
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return
            proc.bytes_read += len(chunk)
            if retaining:
                proc.retained += chunk
                sink = proc.sink
                if sink is not None:
                    proc.sink_busy += 1
                    try:
                        await sink(stream, chunk)
                    except ConnectionError:
                        if proc.sink is sink:
                            proc.sink = None
                    finally:
                        proc.sink_busy -= 1
                continue
            sink = proc.sink
            if sink is not None:
                proc.sink_busy += 1
                try:
                    await sink(stream, chunk)
                    continue
                except ConnectionError:
                    # The host went away: keep draining so the process never blocks.
                    if proc.sink is sink:
                        proc.sink = None
                finally:
                    proc.sink_busy -= 1
            tail = proc.tails[stream]
            tail += chunk
            if len(tail) > TAIL_LIMIT:
                del tail[: len(tail) - TAIL_LIMIT]

    async def _finish(self, proc: Proc) -> None:
        status = await proc.exited
        proc.exit_code = exit_code_of(status)
        proc.popen.returncode = status  # tell Popen it was reaped (no waitpid later)
        # Background children may keep the pipes open: wait while output still
        # flows, give up once it has been quiet for DRAIN_GRACE.
        pending: set[asyncio.Task[None]] = set(proc.pumps)
        exited_at = time.monotonic()
        while pending:
            seen = proc.bytes_read
            _, pending = await asyncio.wait(pending, timeout=DRAIN_GRACE)
            quiet = proc.bytes_read == seen and not _blocked_on_sink(proc)
            over = proc.drain_limit is not None and time.monotonic() - exited_at > proc.drain_limit
            if pending and (quiet or over):
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
                break
        for transport in proc.transports:
            transport.close()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.done.set_result(proc.exit_code)
        self._forget_old()

    def _forget_old(self) -> None:
        exited = [p for p in self.procs.values() if p.exit_code is not None]
        for p in exited[: max(0, len(exited) - KEEP_EXITED)]:
            self.procs.pop(p.pid, None)

    @staticmethod
    def ack(proc: Proc, offset: int) -> None:
        """The host holds stdout up to ``offset``: forget it, let the pump read on."""
        drop = min(max(0, offset - proc.out_base), len(proc.retained))
        if drop:
            del proc.retained[:drop]
            proc.out_base += drop
        proc.acked.set()

    def get(self, pid: Any) -> Proc:
        proc = self.procs.get(pid) if isinstance(pid, int) else None
        if proc is None:
            raise OpError("ESRCH", f"no such process: {pid}")
        return proc

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.exit_code is None:
                kill_tree(proc.pid)
