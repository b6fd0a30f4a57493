"""Operations on processes: exec (run to completion) and the spawn family."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from .errors import OpError
from .link import Channel, Handler, Link, Reply
from .procs import EXEC_DRAIN_MAX, Proc, ProcessTable, exit_code_of, kill_tree, open_gate
from .tasks import background

DEFAULT_MAX_OUTPUT = 1024 * 1024
# Exec results up to this size ride in the RESULT frame itself (one frame, low latency).
INLINE_OUTPUT = 1024 * 1024
# How long a tracked exec waits for the host to move its child into a cgroup.
TRACK_TIMEOUT = 10.0


class _Capture:
    """Collects one exec's output up to a cap, flagging truncation."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = False

    async def sink(self, stream: str, data: bytes) -> None:
        buf = self.buf[stream]
        room = self.cap - len(buf)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        buf += data


def _timeout(args: dict[str, Any]) -> float | None:
    value = args.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int | float) or value <= 0:
        raise OpError("EINVAL", "'timeout' must be a positive number of seconds")
    return float(value)


def make_handlers(table: ProcessTable) -> dict[str, Handler]:
    async def op_exec(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        stdin_wanted = bool(payload) or bool(args.get("stdin"))
        timeout = _timeout(args)
        tracked = bool(args.get("track"))
        proc, missing = table.start(args, stdin=stdin_wanted, listed=False, gated=tracked)
        if proc is None:
            value = {
                "exit_code": 127 if "not found" in missing else 126,
                "timed_out": False,
                "truncated": False,
                "stdout_len": 0,
                "stderr_len": len(missing),
            }
            return value, missing.encode()
        proc.drain_limit = EXEC_DRAIN_MAX
        cap = int(args.get("max_output") or DEFAULT_MAX_OUTPUT)
        capture = _Capture(cap)
        proc.sink = capture.sink
        await table.attach_pipes(proc)
        if tracked:
            await _await_tracking(ch, proc)
        if stdin_wanted:
            background(_feed(proc, payload))
        elif proc.stdin is not None:
            proc.stdin.close()  # the gate's pipe: no input follows its line (EOF at once)
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
        except TimeoutError:
            timed_out = True
            kill_tree(proc.pid)
        except asyncio.CancelledError:
            kill_tree(proc.pid)
            raise
        await asyncio.shield(proc.done)
        out, err = bytes(capture.buf["stdout"]), bytes(capture.buf["stderr"])
        value = {
            "exit_code": exit_code_of(proc.exited.result()),
            "timed_out": timed_out,
            "truncated": capture.truncated,
            "stdout_len": len(out),
            "stderr_len": len(err),
        }
        if len(out) + len(err) <= INLINE_OUTPUT:
            return value, out + err
        await ch.send_data("stdout", out)
        await ch.send_data("stderr", err)
        value["streamed"] = True
        return value, b""

    async def op_spawn(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        proc, missing = table.start(args, stdin=True)
        if proc is None:
            raise OpError("ENOENT", missing.strip(), build_argv0(args))
        proc.retain = bool(args.get("retain"))
        try:
            # "started" goes out before any output can (the pumps start after it).
            await ch.send_event("started", pid=proc.pid, offset=0)
            await _stream_to(ch, proc)
        finally:
            # Even if the host went away (or cancelled) right after "started", the
            # process must be pumped and reaped: unread pipes would block it forever
            # and its exit would never be recorded.
            await asyncio.shield(table.attach_pipes(proc))
        if payload and proc.stdin is not None:
            proc.stdin.write(payload)
        return await _follow(ch, proc)

    async def op_attach(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        """Re-attach to a process after a reconnect: buffered tail first, then live output."""
        proc = table.get(args.get("pid"))
        if proc.has_listener() and not args.get("replace"):
            raise OpError("EBUSY", f"process {proc.pid} already has a listener")
        proc.sink = proc.listener = None  # `replace`: the older listener gets nothing more
        start = 0
        if proc.retain:
            end = proc.out_base + len(proc.retained)
            offset = args.get("offset")
            start = proc.out_base if offset is None else int(offset)
            if not proc.out_base <= start <= end:
                raise OpError(
                    "EINVAL",
                    f"stdout offset {start} of process {proc.pid} is not retained "
                    f"(have {proc.out_base}..{end})",
                )
        await ch.send_event("started", pid=proc.pid, offset=start)
        for stream, tail in proc.tails.items():
            if tail:
                data = bytes(tail)
                tail.clear()
                await ch.send_data(stream, data)
        if proc.retain:
            # Replay retained stdout from the host's offset; output produced meanwhile
            # lands in `retained` too, so loop until caught up, then go live (no await
            # between the last check and setting the sink: nothing slips through).
            pos = start
            while pos < proc.out_base + len(proc.retained):
                data = bytes(proc.retained[pos - proc.out_base :])
                pos += len(data)
                await ch.send_data("stdout", data)
        await _stream_to(ch, proc)
        return await _follow(ch, proc)

    async def op_ack_output(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        proc = table.get(args.get("pid"))
        offset = args.get("offset")
        if not isinstance(offset, int) or offset < 0:
            raise OpError("EINVAL", "'offset' must be a non-negative integer")
        table.ack(proc, offset)
        return {"retained": len(proc.retained)}, b""

    async def op_write_stdin(
        link: Link, ch: Channel, args: dict[str, Any], payload: bytes
    ) -> Reply:
        proc = table.get(args.get("pid"))
        if proc.stdin is None or proc.stdin.is_closing():
            raise OpError("EPIPE", f"stdin of process {proc.pid} is closed")
        proc.stdin.write(payload)
        try:
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise OpError("EPIPE", f"process {proc.pid} stopped reading stdin") from exc
        return None, b""

    async def op_close_stdin(
        link: Link, ch: Channel, args: dict[str, Any], payload: bytes
    ) -> Reply:
        proc = table.get(args.get("pid"))
        if proc.stdin is not None:
            proc.stdin.close()
        return None, b""

    async def op_wait(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        proc = table.get(args.get("pid"))
        try:
            code = await asyncio.wait_for(asyncio.shield(proc.done), _timeout(args))
        except TimeoutError as exc:
            raise OpError("ETIMEDOUT", f"process {proc.pid} still running") from exc
        return {"exit_code": code}, b""

    async def op_kill(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        proc = table.get(args.get("pid"))
        name = str(args.get("signal") or "KILL").upper().removeprefix("SIG")
        try:
            sig = signal.Signals["SIG" + name]
        except KeyError as exc:
            raise OpError("EINVAL", f"unknown signal: {name}") from exc
        if args.get("group", True):
            # Even after the leader exited: its group and session may live on.
            kill_tree(proc.pid, sig)
        elif proc.exit_code is None:
            proc.popen.send_signal(sig)
        return None, b""

    async def op_list(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        return [p.info() for p in table.procs.values()], b""

    return {
        "exec": op_exec,
        "spawn": op_spawn,
        "attach": op_attach,
        "ack_output": op_ack_output,
        "write_stdin": op_write_stdin,
        "close_stdin": op_close_stdin,
        "wait": op_wait,
        "kill": op_kill,
        "list_processes": op_list,
    }


def build_argv0(args: dict[str, Any]) -> str:
    argv = args.get("argv")
    return str(argv[0]) if isinstance(argv, list) and argv else "bash"


async def _await_tracking(ch: Channel, proc: Proc) -> None:
    """Announce a gated exec child; run it once the host has put it in its cgroup.

    Until the gate opens the child has run nothing of the command, so nothing it
    starts can be outside the cgroup. No answer in time: the child never runs."""
    try:
        await ch.send_event("track", pid=proc.pid)
        while True:
            stream, _ = await asyncio.wait_for(ch.recv(), TRACK_TIMEOUT)
            if stream is None:
                raise ConnectionError("host went away")
            if stream == "tracked":
                break
    except BaseException:
        open_gate(proc, go=False)  # the wrapper exits 125
        kill_tree(proc.pid)
        raise
    open_gate(proc)


async def _feed(proc: Proc, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the process exited without reading all of its input
    finally:
        proc.stdin.close()


async def _stream_to(ch: Channel, proc: Proc) -> None:
    async def sink(stream: str, data: bytes) -> None:
        await ch.send_data(stream, data)

    proc.sink = sink
    proc.listener = ch.link


async def _follow(ch: Channel, proc: Proc) -> Reply:
    """Keep the channel open until the process exits and its output is delivered."""
    sink = proc.sink
    try:
        code = await asyncio.shield(proc.done)
    finally:
        # Cancelled (host gone or cancel): detach, the process keeps running.
        if proc.sink is sink:
            proc.sink = proc.listener = None
    return {"pid": proc.pid, "exit_code": code}, b""
