"""The vm actor: one key = one sandbox container, with exec, processes and files.

Register it with ``setup(use={"vm": vm_actor(manager)})``; orchestrators reach it
as ``c.actors.vm.get_or_create([key], input={...options...})``. Every action takes
its positional arguments plus an optional trailing options object (what keyword
arguments of a client call become).
"""

from __future__ import annotations

import asyncio
import base64
import bz2
import logging
import lzma
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from host.blobs import BlobStore
from host.sandbox import ProcessExit, ProcessHandle, Sandbox, SandboxError
from orchestrator import ActorContext, ActorDefinition, actor, event
from orchestrator.errors import InvalidRequest

from .blob_actions import blob_actions, read_prefix
from .manager import SandboxManager, SandboxRecord
from .options import VmOptions, parse_call_options, parse_options
from .sessions import (
    SessionState,
    detach_sessions,
    gateway_down,
    gateway_up,
    session_actions,
    sessions_up,
)

log = logging.getLogger("agentvm.vm")

# An idle timer that fires this close to the vm's idle deadline stops the container
# at once instead of arming another wake-up for the remainder.
_IDLE_SLACK = 1.0
# Upload archives are fed to the sandbox in pieces of this size.
_CHUNK = 256 * 1024


class _Vars:
    """In-memory per-vm state (rebuilt on wake): the live handle and what runs."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.lock = asyncio.Lock()
        self.sandbox: Sandbox | None = None
        # The container as last acquired; survives a failed action's state rollback
        # so the next commit (or on_sleep) records it.
        self.record: SandboxRecord | None = None
        self.last_used: float | None = None
        self.pumps: dict[int, asyncio.Task[None]] = {}
        self.options: VmOptions | None = None
        self.sessions = SessionState()


# --- option models of the actions ----------------------------------------------------------


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecOptions(_Opts):
    cwd: str | None = None
    env: dict[str, str] | None = None
    stdin: str | bytes | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_output: int | None = Field(default=None, gt=0)


class SpawnOptions(_Opts):
    cwd: str | None = None
    env: dict[str, str] | None = None
    stdin: str | bytes | None = None


class WaitOptions(_Opts):
    timeout: float | None = Field(default=None, ge=0)


class KillOptions(_Opts):
    signal: Literal["KILL", "TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT"] = "KILL"
    group: bool = True


class ReadOptions(_Opts):
    # At most this many bytes (the file's beginning): a file written by sandbox code
    # may be any size, and the caller holds what it reads.
    limit: int | None = Field(default=None, gt=0)


class WriteOptions(_Opts):
    mode: int | None = Field(default=None, ge=0, le=0o7777)
    parents: bool = False


class WriteFilesOptions(_Opts):
    parents: bool = True


class ReaddirOptions(_Opts):
    max_entries: int | None = Field(default=None, gt=0)


class MkdirOptions(_Opts):
    parents: bool = True
    exist_ok: bool = True


class MoveOptions(_Opts):
    overwrite: bool = False


class DeleteOptions(_Opts):
    recursive: bool = False


# --- helpers ------------------------------------------------------------------------------


def _vars(c: ActorContext) -> _Vars:
    v = c.vars
    assert isinstance(v, _Vars)
    return v


def _options(c: ActorContext) -> VmOptions:
    v = _vars(c)
    if v.options is None:
        v.options = VmOptions.model_validate(c.state["options"])
    return v.options


def _current(c: ActorContext) -> SandboxRecord | None:
    v = _vars(c)
    if v.record is not None:
        return v.record
    data = c.state.get("sandbox")
    return SandboxRecord.from_json(data) if data else None


def _remember(c: ActorContext, record: SandboxRecord | None) -> None:
    """Put the container in the state (committed with the action, or by on_sleep)."""
    if record is None:
        return
    data = record.to_json()
    if c.state.get("sandbox") != data:
        c.state["sandbox"] = data


async def sandbox_of(c: ActorContext) -> Sandbox:
    """The vm's live sandbox, acquired, started, adopted or recreated as needed.

    For actions added to the vm actor elsewhere (e.g. agent sessions)."""
    v = _vars(c)
    sandbox = v.sandbox
    if sandbox is None or not sandbox.connected:
        async with v.lock:
            sandbox = v.sandbox
            if sandbox is None or not sandbox.connected:
                record = _current(c)
                if record is None:
                    sandbox, record = await v.manager.acquire(list(c.key), _options(c))
                else:
                    sandbox, record = await v.manager.resume(record, list(c.key), _options(c))
                v.sandbox, v.record = sandbox, record
                await gateway_up(c, v.manager.gateway, sandbox, c.state.get("token_budget"))
                await sessions_up(c, v.sessions, sandbox, _options(c).bundles, adopted=False)
    _remember(c, v.record)
    return sandbox


def _used(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Mark the vm as in use at the start and end of the action (for idle stop)."""

    @wraps(fn)
    async def wrapper(c: ActorContext, *args: Any) -> Any:
        v = _vars(c)
        v.last_used = time.time()
        try:
            return await fn(c, *args)
        finally:
            v.last_used = time.time()

    return wrapper


def _command(command: Any) -> str | list[str]:
    if isinstance(command, str) and command:
        return command
    if (
        isinstance(command, list)
        and command
        and all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in command)
    ):
        return [str(a) for a in command]
    raise InvalidRequest(
        "command must be a non-empty string (run by bash -c) or a non-empty list (argv)",
        field="command",
    )


def _path(value: Any, field: str = "path") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string", field=field)
    return value


def _pid(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidRequest("pid must be a positive integer", field="pid")
    return value


def _content(value: Any, field: str = "content") -> bytes | str:
    if not isinstance(value, bytes | str):
        raise InvalidRequest(f"{field} must be bytes or a string", field=field)
    return value


def _output_event(pid: int, stream: str, data: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = {"pid": pid, "stream": stream}
    try:
        payload["data"] = data.decode("utf-8")
    except UnicodeDecodeError:
        # Not text (or a multi-byte character split across chunks): exact bytes too.
        payload["data"] = data.decode("utf-8", errors="replace")
        payload["data_b64"] = base64.b64encode(data).decode()
    return payload


def _pump(c: ActorContext, handle: ProcessHandle) -> None:
    """Broadcast a process's output and exit; the vm stays awake until it exits."""
    v = _vars(c)
    release = c.hold()

    async def run() -> None:
        try:
            async for ev in handle.events():
                if isinstance(ev, ProcessExit):
                    c.broadcast("process_exit", {"pid": ev.pid, "exit_code": ev.exit_code})
                else:
                    c.broadcast("process_output", _output_event(ev.pid, ev.stream, ev.data))
        except SandboxError as exc:
            log.info("stopped following process %s of vm %s: %s", handle.pid, list(c.key), exc)
        finally:
            v.pumps.pop(handle.pid, None)
            release()

    v.pumps[handle.pid] = asyncio.create_task(run(), name=f"vm-process-{handle.pid}")


async def _reattach(c: ActorContext, sandbox: Sandbox) -> None:
    """After a wake, follow processes still running in the sandbox (host restart)."""
    v = _vars(c)
    try:
        await sandbox.wait_ready()
        for proc in await sandbox.list_processes():
            if proc.running and proc.pid not in v.pumps:
                _pump(c, await sandbox.attach(proc.pid))
    except SandboxError as exc:
        log.info("could not re-attach processes of vm %s: %s", list(c.key), exc)


async def _plain_tar(archive: bytes) -> AsyncIterator[bytes]:
    """The archive as an uncompressed tar stream: ``tar`` in the sandbox reads it from
    a pipe, where it cannot detect compression, so gzip/bzip2/xz are undone here."""
    decompressor: Any = None
    if archive.startswith(b"\x1f\x8b"):
        decompressor = zlib.decompressobj(wbits=47)  # gzip (and zlib) headers
    elif archive.startswith(b"BZh"):
        decompressor = bz2.BZ2Decompressor()
    elif archive.startswith(b"\xfd7zXZ\x00"):
        decompressor = lzma.LZMADecompressor()
    view = memoryview(archive)
    for start in range(0, len(view), _CHUNK):
        piece = bytes(view[start : start + _CHUNK])
        yield decompressor.decompress(piece) if decompressor is not None else piece


async def _arm_idle_stop(c: ActorContext, when: float) -> None:
    old = c.state.get("idle_schedule")
    if old is not None:
        await c.schedule.cancel(old)
    c.state["idle_schedule"] = await c.schedule.at(when, "idle_stop")


async def _info(c: ActorContext) -> dict[str, Any]:
    v = _vars(c)
    record = _current(c)
    options = dict(c.state["options"])
    if record is None:
        return {
            "container": None,
            "container_id": None,
            "volume": None,
            "image": None,
            "running": False,
            "status": "none",
            "options": options,
        }
    if v.sandbox is not None and v.sandbox.connected and v.sandbox.name == record.name:
        status = "running"
    else:
        status = await v.manager.status(record)
    return {
        "container": record.name,
        "container_id": record.id,
        "volume": record.volume,
        "image": record.image,
        "running": status == "running",
        "status": status,
        "options": options,
    }


# --- the definition ---------------------------------------------------------------------


def vm_actor(
    manager: SandboxManager, defaults: VmOptions | None = None, *, blobs: BlobStore | None = None
) -> ActorDefinition:
    """The vm actor type; ``defaults`` (else ``manager.defaults``) are the options a
    vm gets unless its create input overrides them. The actor type's
    ``sleep_timeout`` is ``defaults.idle_timeout`` (capped by the engine's).
    ``blobs``: the store ``put_blob`` streams uploaded blobs from (default: the one
    of the engine's database, which ``POST /blobs`` writes to)."""
    base = defaults or manager.defaults

    def create_state(input: Any) -> dict[str, Any]:
        options = parse_options(input, base)
        return {"options": options.model_dump(mode="json"), "sandbox": None, "idle_schedule": None}

    # -- lifecycle hooks --

    async def on_wake(c: ActorContext) -> None:
        record = _current(c)
        if record is None:
            return  # created lazily by the first call
        try:
            sandbox = await manager.adopt(record)
        except SandboxError as exc:
            log.warning("could not adopt the container of vm %s: %s", list(c.key), exc)
            return
        v = _vars(c)
        v.sandbox = sandbox
        if sandbox is not None:
            await gateway_up(c, manager.gateway, sandbox, c.state.get("token_budget"))
            await sessions_up(c, v.sessions, sandbox, _options(c).bundles, adopted=True)
            task = asyncio.create_task(_reattach(c, sandbox))
            manager._tasks.add(task)
            task.add_done_callback(manager._tasks.discard)

    async def on_sleep(c: ActorContext) -> None:
        v = _vars(c)
        for task in list(v.pumps.values()):
            task.cancel()  # the processes keep running in the sandbox
        await detach_sessions(v.sessions)  # and so do the agents
        await gateway_down(c, manager.gateway, forget=False)
        record = _current(c)
        if record is None:
            return
        _remember(c, record)
        if v.sandbox is None:
            return  # not running during this wake
        options = _options(c)
        now = time.time()
        deadline = (v.last_used or 0.0) + options.idle_timeout
        if c.engine_stopping:
            # Host restart: leave it running for the next start to adopt, with a
            # durable wake-up to stop it if nobody uses it meanwhile.
            await _arm_idle_stop(c, max(now, deadline))
            return
        if deadline - now > _IDLE_SLACK:
            await _arm_idle_stop(c, deadline)
            return
        async with v.lock:
            await manager.stop(record)
            v.sandbox = None

    async def on_destroy(c: ActorContext) -> None:
        v = _vars(c)
        for task in list(v.pumps.values()):
            task.cancel()
        await detach_sessions(v.sessions)
        await gateway_down(c, manager.gateway, forget=True)
        record = _current(c)
        extra = v.sandbox if v.sandbox is not None and (
            record is None or v.sandbox.name != record.name
        ) else None  # fmt: skip
        await manager.destroy(record, extra)
        v.sandbox = None

    # -- actions: lifecycle --

    async def idle_stop(c: ActorContext) -> None:
        """Scheduled: stop the container if the vm stayed idle for its idle_timeout."""
        v = _vars(c)
        c.state["idle_schedule"] = None
        if v.pumps or v.sandbox is None:
            return
        if v.last_used is not None and time.time() - v.last_used < (
            _options(c).idle_timeout - _IDLE_SLACK
        ):
            return  # used since; on_sleep arms a new deadline
        record = _current(c)
        if record is not None:
            async with v.lock:
                await manager.stop(record)
                v.sandbox = None

    async def info(c: ActorContext) -> dict[str, Any]:
        """``{container, container_id, volume, image, running, status, options}``
        without starting anything."""
        return await _info(c)

    @_used
    async def start(c: ActorContext) -> dict[str, Any]:
        """Create or start the container now; returns :func:`info`."""
        await sandbox_of(c)
        return await _info(c)

    async def stop(c: ActorContext) -> dict[str, Any]:
        """Stop the container now (``/home/user`` kept; the next call starts it)."""
        v = _vars(c)
        record = _current(c)
        if record is not None:
            _remember(c, record)
            async with v.lock:
                await manager.stop(record)
                v.sandbox = None
        return await _info(c)

    # -- actions: exec and processes --

    @_used
    async def exec_(c: ActorContext, command: Any, opts: Any = None) -> dict[str, Any]:
        o = parse_call_options(ExecOptions, opts, "exec")
        cmd = _command(command)
        stdin = o.stdin.encode() if isinstance(o.stdin, str) else o.stdin
        if stdin is not None and len(stdin) > 4 * 2**20:
            raise InvalidRequest("exec stdin is limited to 4 MiB; use spawn", field="stdin")
        sandbox = await sandbox_of(c)
        result = await sandbox.exec(
            cmd, cwd=o.cwd, env=o.env, stdin=stdin, timeout=o.timeout, max_output=o.max_output
        )
        return result.model_dump()

    @_used
    async def spawn(c: ActorContext, command: Any, opts: Any = None) -> dict[str, int]:
        o = parse_call_options(SpawnOptions, opts, "spawn")
        cmd = _command(command)
        sandbox = await sandbox_of(c)
        handle = await sandbox.spawn(cmd, cwd=o.cwd, env=o.env, stdin=o.stdin)
        _pump(c, handle)
        return {"pid": handle.pid}

    @_used
    async def write_stdin(c: ActorContext, pid: Any, data: Any) -> None:
        await (await sandbox_of(c)).write_stdin(_pid(pid), _content(data, "data"))

    @_used
    async def close_stdin(c: ActorContext, pid: Any) -> None:
        await (await sandbox_of(c)).close_stdin(_pid(pid))

    @_used
    async def wait_process(c: ActorContext, pid: Any, opts: Any = None) -> int:
        o = parse_call_options(WaitOptions, opts, "wait_process")
        return await (await sandbox_of(c)).wait_process(_pid(pid), timeout=o.timeout)

    @_used
    async def kill_process(c: ActorContext, pid: Any, opts: Any = None) -> None:
        o = parse_call_options(KillOptions, opts, "kill_process")
        await (await sandbox_of(c)).kill_process(_pid(pid), o.signal, group=o.group)

    @_used
    async def list_processes(c: ActorContext) -> list[dict[str, Any]]:
        return [p.model_dump() for p in await (await sandbox_of(c)).list_processes()]

    # -- actions: files --

    @_used
    async def read_file(c: ActorContext, path: Any, opts: Any = None) -> bytes:
        o = parse_call_options(ReadOptions, opts, "read_file")
        sandbox = await sandbox_of(c)
        if o.limit is None:
            return await sandbox.read_file(_path(path))
        return await read_prefix(sandbox, _path(path), o.limit)

    @_used
    async def write_file(c: ActorContext, path: Any, content: Any, opts: Any = None) -> None:
        o = parse_call_options(WriteOptions, opts, "write_file")
        data = _content(content)
        await (await sandbox_of(c)).write_file(_path(path), data, mode=o.mode, parents=o.parents)

    @_used
    async def read_files(c: ActorContext, paths: Any) -> dict[str, bytes]:
        if not isinstance(paths, list):
            raise InvalidRequest("paths must be a list of strings", field="paths")
        return await (await sandbox_of(c)).read_files([_path(p, "paths") for p in paths])

    @_used
    async def write_files(c: ActorContext, files: Any, opts: Any = None) -> None:
        o = parse_call_options(WriteFilesOptions, opts, "write_files")
        if not isinstance(files, dict):
            raise InvalidRequest("files must be an object {path: content}", field="files")
        checked = {_path(p, "files"): _content(d, f"files.{p}") for p, d in files.items()}
        await (await sandbox_of(c)).write_files(checked, parents=o.parents)

    @_used
    async def readdir(c: ActorContext, path: Any = ".") -> list[dict[str, Any]]:
        return [e.model_dump() for e in await (await sandbox_of(c)).readdir(_path(path))]

    @_used
    async def readdir_recursive(
        c: ActorContext, path: Any = ".", opts: Any = None
    ) -> list[dict[str, Any]]:
        o = parse_call_options(ReaddirOptions, opts, "readdir_recursive")
        sandbox = await sandbox_of(c)
        entries = await sandbox.readdir_recursive(_path(path), max_entries=o.max_entries)
        return [e.model_dump() for e in entries]

    @_used
    async def stat(c: ActorContext, path: Any) -> dict[str, Any]:
        return (await (await sandbox_of(c)).stat(_path(path))).model_dump()

    @_used
    async def exists(c: ActorContext, path: Any) -> bool:
        return await (await sandbox_of(c)).exists(_path(path))

    @_used
    async def mkdir(c: ActorContext, path: Any, opts: Any = None) -> None:
        o = parse_call_options(MkdirOptions, opts, "mkdir")
        await (await sandbox_of(c)).mkdir(_path(path), parents=o.parents, exist_ok=o.exist_ok)

    @_used
    async def move(c: ActorContext, src: Any, dst: Any, opts: Any = None) -> None:
        o = parse_call_options(MoveOptions, opts, "move")
        sandbox = await sandbox_of(c)
        await sandbox.move(_path(src, "src"), _path(dst, "dst"), overwrite=o.overwrite)

    @_used
    async def delete_file(c: ActorContext, path: Any, opts: Any = None) -> None:
        o = parse_call_options(DeleteOptions, opts, "delete_file")
        await (await sandbox_of(c)).delete(_path(path), recursive=o.recursive)

    @_used
    async def upload_dir(c: ActorContext, path: Any, archive: Any) -> None:
        """Extract a tar archive (bytes; any compression tar detects) into ``path``."""
        if not isinstance(archive, bytes):
            raise InvalidRequest("archive must be tar bytes", field="archive")
        await (await sandbox_of(c)).upload_tar(_path(path), _plain_tar(archive))

    @_used
    async def download_dir(c: ActorContext, path: Any) -> bytes:
        """The directory's contents as an uncompressed tar archive (bytes)."""
        sandbox = await sandbox_of(c)
        return b"".join([chunk async for chunk in sandbox.download_tar(_path(path))])

    definition = actor(
        create_state=create_state,
        create_vars=lambda: _Vars(manager),
        actions={
            "info": info,
            "start": start,
            "stop": stop,
            "idle_stop": idle_stop,
            "exec": exec_,
            "spawn": spawn,
            "write_stdin": write_stdin,
            "close_stdin": close_stdin,
            "wait_process": wait_process,
            "kill_process": kill_process,
            "list_processes": list_processes,
            "read_file": read_file,
            "write_file": write_file,
            "read_files": read_files,
            "write_files": write_files,
            "readdir": readdir,
            "readdir_recursive": readdir_recursive,
            "stat": stat,
            "exists": exists,
            "mkdir": mkdir,
            "move": move,
            "delete_file": delete_file,
            "upload_dir": upload_dir,
            "download_dir": download_dir,
            **session_actions(lambda c: _vars(c).sessions, sandbox_of, manager.gateway),
            **{name: _used(fn) for name, fn in blob_actions(blobs, sandbox_of).items()},
        },
        events={
            "process_output": event("{pid, stream, data[, data_b64]} of a spawned process"),
            "process_exit": event("{pid, exit_code}: a spawned process ended"),
            "session_event": event("{session_id, seq, kind, data}: a stored session update"),
        },
        on_wake=on_wake,
        on_sleep=on_sleep,
        on_destroy=on_destroy,
        options={"sleep_timeout": base.idle_timeout},
    )
    manager.register(definition)
    return definition


__all__ = ["sandbox_of", "vm_actor"]
