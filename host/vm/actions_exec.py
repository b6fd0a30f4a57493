"""The vm actor's exec and process actions (``exec``, ``spawn``, stdin, wait, kill,
list) and the pumps that broadcast a spawned process's output.

Cancelling the caller of ``exec`` (a run cancelled mid-step) cancels the sandbox
channel, and the supervisor kills the command's process tree.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any, Literal

from pydantic import Field

from host.sandbox import ProcessExit, ProcessHandle, Sandbox, SandboxError, SupervisorError
from orchestrator import ActorContext
from orchestrator.definitions import action
from orchestrator.errors import InvalidRequest

from .actions_base import (
    Opts,
    VmActionsBase,
    check_command,
    check_content,
    check_pid,
    sandbox_of,
    used,
    vm_vars,
)
from .options import parse_call_options
from .sessions import session_pids

log = logging.getLogger("agentvm.vm")


class ExecOptions(Opts):
    cwd: str | None = None
    env: dict[str, str] | None = None
    stdin: str | bytes | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_output: int | None = Field(default=None, gt=0)


class SpawnOptions(Opts):
    cwd: str | None = None
    env: dict[str, str] | None = None
    stdin: str | bytes | None = None


class WaitOptions(Opts):
    timeout: float | None = Field(default=None, ge=0)


class KillOptions(Opts):
    signal: Literal["KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT"] = "KILL"
    group: bool = True


def output_event(pid: int, stream: str, data: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = {"pid": pid, "stream": stream}
    try:
        payload["data"] = data.decode("utf-8")
    except UnicodeDecodeError:
        # Not text (or a multi-byte character split across chunks): exact bytes too.
        payload["data"] = data.decode("utf-8", errors="replace")
        payload["data_b64"] = base64.b64encode(data).decode()
    return payload


def pump(c: ActorContext, handle: ProcessHandle) -> None:
    """Broadcast a process's output and exit; the vm stays awake until it exits."""
    v = vm_vars(c)
    release = c.hold()

    async def run() -> None:
        try:
            async for ev in handle.events():
                if isinstance(ev, ProcessExit):
                    c.broadcast("process_exit", {"pid": ev.pid, "exit_code": ev.exit_code})
                else:
                    c.broadcast("process_output", output_event(ev.pid, ev.stream, ev.data))
        except SandboxError as exc:
            log.info("stopped following process %s of vm %s: %s", handle.pid, list(c.key), exc)
        finally:
            v.pumps.pop(handle.pid, None)
            release()

    v.pumps[handle.pid] = asyncio.create_task(run(), name=f"vm-process-{handle.pid}")


async def reattach(c: ActorContext, sandbox: Sandbox) -> None:
    """After a wake, follow processes still running in the sandbox (host restart)."""
    v = vm_vars(c)
    try:
        await sandbox.wait_ready()
        agents = session_pids(v.sessions)  # followed by their sessions (sessions.py)
        for proc in await sandbox.list_processes():
            if proc.running and proc.pid not in v.pumps and proc.pid not in agents:
                try:
                    pump(c, await sandbox.attach(proc.pid))
                except SupervisorError as exc:
                    # Exited meanwhile, or someone listens already (an agent starting).
                    log.info("not following process %s of vm %s: %s", proc.pid, list(c.key), exc)
    except SandboxError as exc:
        log.info("could not re-attach processes of vm %s: %s", list(c.key), exc)


class ProcessActions(VmActionsBase):
    """``exec`` (run to completion) and spawned processes followed by broadcasts."""

    @action(name="exec")
    @used
    async def exec_(self, c: ActorContext, command: Any, opts: Any = None) -> dict[str, Any]:
        """Run ``command`` to completion → ``{exit_code, stdout, stderr, timed_out, ...}``."""
        o = parse_call_options(ExecOptions, opts, "exec")
        cmd = check_command(command)
        stdin = o.stdin.encode() if isinstance(o.stdin, str) else o.stdin
        if stdin is not None and len(stdin) > 4 * 2**20:
            raise InvalidRequest("exec stdin is limited to 4 MiB; use spawn", field="stdin")
        sandbox = await sandbox_of(c)
        result = await sandbox.exec(
            cmd, cwd=o.cwd, env=o.env, stdin=stdin, timeout=o.timeout, max_output=o.max_output
        )
        return result.model_dump()

    @action
    @used
    async def spawn(self, c: ActorContext, command: Any, opts: Any = None) -> dict[str, int]:
        """Start ``command`` in the background → ``{pid}``; output is broadcast."""
        o = parse_call_options(SpawnOptions, opts, "spawn")
        cmd = check_command(command)
        sandbox = await sandbox_of(c)
        handle = await sandbox.spawn(cmd, cwd=o.cwd, env=o.env, stdin=o.stdin)
        pump(c, handle)
        return {"pid": handle.pid}

    @action
    @used
    async def write_stdin(self, c: ActorContext, pid: Any, data: Any) -> None:
        await (await sandbox_of(c)).write_stdin(check_pid(pid), check_content(data, "data"))

    @action
    @used
    async def close_stdin(self, c: ActorContext, pid: Any) -> None:
        await (await sandbox_of(c)).close_stdin(check_pid(pid))

    @action
    @used
    async def wait_process(self, c: ActorContext, pid: Any, opts: Any = None) -> int:
        o = parse_call_options(WaitOptions, opts, "wait_process")
        return await (await sandbox_of(c)).wait_process(check_pid(pid), timeout=o.timeout)

    @action
    @used
    async def kill_process(self, c: ActorContext, pid: Any, opts: Any = None) -> None:
        o = parse_call_options(KillOptions, opts, "kill_process")
        await (await sandbox_of(c)).kill_process(check_pid(pid), o.signal, group=o.group)

    @action
    @used
    async def list_processes(self, c: ActorContext) -> list[dict[str, Any]]:
        return [p.model_dump() for p in await (await sandbox_of(c)).list_processes()]
