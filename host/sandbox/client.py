"""Typed operations on a sandbox, spoken over the supervisor protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tarfile
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vm_images.supervisor import protocol as P

from .cgroups import ExecTracker
from .connection import Channel, LinkClosed, LinkUnresponsive, Result, SupervisorConnection
from .errors import SandboxError
from .models import ExecResult, FileStat, ProcessEvent, ProcessExit, ProcessInfo, ProcessOutput

log = logging.getLogger("agentvm.sandbox")

Command = str | Sequence[str]
# exec with a timeout returns at most this long after it, whatever the sandbox does.
EXEC_GRACE = 5.0
# read_file (whole file in memory) refuses bigger files; stream them instead.
READ_FILE_LIMIT = 64 * 1024 * 1024
EventCallback = Callable[[ProcessEvent], Awaitable[None] | None]


def _command_args(command: Command) -> dict[str, Any]:
    """A string runs through ``bash -c``; a sequence is an argv."""
    if isinstance(command, str):
        return {"command": command}
    argv = list(command)
    if not argv:
        raise ValueError("empty argv")
    return {"argv": [str(a) for a in argv]}


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return {str(k): str(v) for k, v in env.items()} if env else None


class ProcessHandle:
    """A spawned process. Iterate :meth:`events` (or pass ``on_event`` to spawn) to
    receive output; unread output stops the process once the window is full."""

    def __init__(self, client: SandboxClient, channel: Channel, pid: int, offset: int = 0) -> None:
        self.client = client
        self.pid = pid
        # stdout byte offset of the first output this handle delivers (``retain``
        # processes re-attached at an offset; 0 otherwise).
        self.offset = offset
        self._channel = channel
        self.exit_code: int | None = None

    async def events(self) -> AsyncIterator[ProcessEvent]:
        try:
            while True:
                try:
                    kind, a, b = await self._channel.next()
                except LinkClosed as exc:
                    raise self.client._lost(exc) from exc
                if kind == "data":
                    yield ProcessOutput(pid=self.pid, stream=a, data=b)
                elif kind == "result":
                    value = Channel.check(a, b, {}).value
                    self.exit_code = int(value["exit_code"])
                    yield ProcessExit(pid=self.pid, exit_code=self.exit_code)
                    return
        finally:
            if not self._channel.finished:
                # Stop listening but leave the process running (re-attach later).
                await self._channel.cancel()

    async def wait(self, timeout: float | None = None) -> int:
        return await self.client.wait_process(self.pid, timeout=timeout)

    async def write_stdin(self, data: bytes | str) -> None:
        await self.client.write_stdin(self.pid, data)

    async def close_stdin(self) -> None:
        await self.client.close_stdin(self.pid)

    async def kill(self, signal: str = "KILL") -> None:
        await self.client.kill_process(self.pid, signal)


class SandboxClient(ABC):
    """Everything the supervisor can do, as async methods.

    Subclasses say where the live link comes from and how a broken link is
    reported (``Sandbox`` turns it into :class:`SandboxLost`).
    """

    @abstractmethod
    async def _link(self) -> SupervisorConnection: ...

    @abstractmethod
    def _lost(self, exc: LinkClosed) -> SandboxError: ...

    exec_grace = EXEC_GRACE
    read_file_limit = READ_FILE_LIMIT

    async def _tracker(self, conn: SupervisorConnection) -> ExecTracker | None:
        """Where timed execs get their own cgroup (None: untracked)."""
        return None

    async def _call(
        self, op: str, args: dict[str, Any] | None = None, payload: bytes = b""
    ) -> Result:
        conn = await self._link()
        try:
            return await conn.call(op, args, payload)
        except LinkClosed as exc:
            raise self._lost(exc) from exc

    async def _open(self, op: str, args: dict[str, Any], payload: bytes = b"") -> Channel:
        conn = await self._link()
        try:
            return await conn.open(op, args, payload)
        except LinkClosed as exc:
            raise self._lost(exc) from exc

    async def _finish(self, channel: Channel) -> Result:
        try:
            return await channel.result()
        except LinkClosed as exc:
            raise self._lost(exc) from exc
        except asyncio.CancelledError:
            await channel.cancel()
            raise

    # -- exec ---------------------------------------------------------------

    async def ping(self) -> int:
        """Round trip to the supervisor; returns its pid (1 inside a container)."""
        return int((await self._call("ping")).value["pid"])

    async def exec(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
    ) -> ExecResult:
        """Run to completion. Missing binaries give exit code 127, not an exception;
        on ``timeout`` the whole process group is killed and ``timed_out`` is set."""
        args = _command_args(command)
        args.update(cwd=cwd, env=_env(env), timeout=timeout, max_output=max_output)
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        if len(data) > P.WINDOW:
            raise ValueError("exec stdin is limited to 4 MiB; use spawn + write_stdin")
        conn = await self._link()
        tracker = await self._tracker(conn) if timeout is not None else None
        if tracker is not None:
            args["track"] = True
        try:
            channel = await conn.open(
                "exec", {k: v for k, v in args.items() if v is not None}, data
            )
        except LinkClosed as exc:
            raise self._lost(exc) from exc
        cgroups: list[Path] = []
        kill = True
        try:
            deadline = None if timeout is None else timeout + self.exec_grace
            try:
                async with asyncio.timeout(deadline) as scope:
                    res = await self._exec_result(conn, channel, tracker, cgroups)
            except TimeoutError:
                if not scope.expired():
                    raise
                # The sandbox did not finish in time (an escaped child holding the
                # pipes, a frozen supervisor): the call ends now either way.
                await channel.cancel()
                if not await conn.probe(self.exec_grace):
                    conn.give_up("supervisor did not answer after an exec deadline")
                    raise self._lost(LinkUnresponsive(conn.close_reason)) from None
                message = f"exec did not finish within {timeout:g}s + {self.exec_grace:g}s\n"
                return ExecResult.from_bytes(137, b"", message.encode(), True, False)
            kill = bool(res.value["timed_out"])
        except asyncio.CancelledError:
            await channel.cancel()
            raise
        finally:
            if tracker is not None and cgroups:
                # A timed-out tree dies whole; after a normal exit, background children
                # keep running (as documented) and their cgroup stays until empty.
                await asyncio.shield(
                    tracker.akill(cgroups[0]) if kill else tracker.aremove(cgroups[0])
                )
        value = res.value
        if value.get("streamed"):
            out, err = res.joined("stdout"), res.joined("stderr")
        else:
            split = int(value["stdout_len"])
            out, err = res.payload[:split], res.payload[split:]
        return ExecResult.from_bytes(
            int(value["exit_code"]), out, err, bool(value["timed_out"]), bool(value["truncated"])
        )

    async def _exec_result(
        self,
        conn: SupervisorConnection,
        channel: Channel,
        tracker: ExecTracker | None,
        cgroups: list[Path],
    ) -> Result:
        """An exec's data and result; a ``track`` event moves its gated child first."""
        data: dict[str, list[bytes]] = {}
        try:
            while True:
                kind, a, b = await channel.next()
                if kind == "data":
                    data.setdefault(a, []).append(b)
                elif kind == "result":
                    return Channel.check(a, b, data)
                elif kind == "event" and a.get("kind") == "track" and not cgroups:
                    if tracker is not None:
                        try:
                            cgroups.append(await tracker.amove(int(a.get("pid", 0))))
                        except (OSError, ValueError) as exc:
                            log.warning("exec runs untracked: %s", exc)
                    await conn.send({"t": P.EVENT, "ch": channel.id, "kind": "tracked"})
        except LinkClosed as exc:
            raise self._lost(exc) from exc

    # -- processes ----------------------------------------------------------

    async def spawn(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        on_event: EventCallback | None = None,
        retain_output: bool = False,
    ) -> ProcessHandle:
        """Start a long-running process; returns once it runs (pid known).

        With ``on_event`` a background task delivers its events; otherwise
        iterate ``handle.events()``. With ``retain_output`` the supervisor keeps
        stdout until :meth:`ack_output` (bounded: the process blocks when 8 MiB are
        unacknowledged), so :meth:`attach` at an offset loses nothing across a host
        restart.
        """
        args = _command_args(command)
        args.update(cwd=cwd, env=_env(env), retain=True if retain_output else None)
        data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        channel = await self._open("spawn", {k: v for k, v in args.items() if v is not None}, data)
        return await self._started(channel, on_event)

    async def attach(
        self,
        pid: int,
        *,
        on_event: EventCallback | None = None,
        offset: int | None = None,
        replace: bool = False,
    ) -> ProcessHandle:
        """Listen to a process again (e.g. after a host restart): buffered tail, then live.

        For a ``retain_output`` process, stdout is replayed from ``offset`` (default:
        the oldest unacknowledged byte); ``handle.offset`` says where it starts.
        ``replace`` takes over from a listener that may still be attached."""
        args: dict[str, Any] = {"pid": pid}
        if offset is not None:
            args["offset"] = offset
        if replace:
            args["replace"] = True
        channel = await self._open("attach", args)
        return await self._started(channel, on_event)

    async def ack_output(self, pid: int, offset: int) -> None:
        """Tell the supervisor the host holds a ``retain_output`` process's stdout up to
        ``offset``: it may forget those bytes."""
        await self._call("ack_output", {"pid": pid, "offset": offset})

    async def _started(self, channel: Channel, on_event: EventCallback | None) -> ProcessHandle:
        try:
            kind, a, b = await channel.next()
        except LinkClosed as exc:
            raise self._lost(exc) from exc
        if kind == "result":
            Channel.check(a, b, {})
            raise SandboxError("process ended before it started")
        handle = ProcessHandle(self, channel, int(a["pid"]), int(a.get("offset") or 0))
        if on_event is not None:
            task = asyncio.create_task(_pump(handle, on_event))
            _background.add(task)
            task.add_done_callback(_background.discard)
        return handle

    async def write_stdin(self, pid: int, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        for start in range(0, max(len(raw), 1), P.CHUNK):
            await self._call("write_stdin", {"pid": pid}, raw[start : start + P.CHUNK])

    async def close_stdin(self, pid: int) -> None:
        await self._call("close_stdin", {"pid": pid})

    async def wait_process(self, pid: int, *, timeout: float | None = None) -> int:
        """Exit code of the process, waiting for it (``SandboxTimeout`` after timeout)."""
        args: dict[str, Any] = {"pid": pid}
        if timeout is not None:
            args["timeout"] = timeout
        return int((await self._call("wait", args)).value["exit_code"])

    async def kill_process(self, pid: int, signal: str = "KILL", *, group: bool = True) -> None:
        await self._call("kill", {"pid": pid, "signal": signal, "group": group})

    async def list_processes(self) -> list[ProcessInfo]:
        return [ProcessInfo.model_validate(p) for p in (await self._call("list_processes")).value]

    # -- files --------------------------------------------------------------

    async def read_file(self, path: str, *, max_size: int | None = None) -> bytes:
        """A regular file's bytes; ``FileTooLarge`` beyond ``max_size`` (default
        ``read_file_limit``; use :meth:`read_file_stream` for big files)."""
        limit = self.read_file_limit if max_size is None else max_size
        res = await self._call("read_file", {"path": path, "max_size": limit})
        return res.payload if not res.value.get("streamed") else res.joined("body")

    async def read_file_stream(
        self, path: str, *, max_size: int | None = None
    ) -> AsyncIterator[bytes]:
        """A regular file in chunks; memory stays bounded by the channel window.
        ``max_size`` (default: none) fails with ``FileTooLarge`` before the first chunk
        for a bigger file, or mid-stream if it grows past it."""
        args: dict[str, Any] = {"path": path}
        if max_size is not None:
            args["max_size"] = max_size
        async for chunk in self._download("read_file", args):
            yield chunk

    async def _download(self, op: str, args: dict[str, Any]) -> AsyncIterator[bytes]:
        """The data chunks of a streaming call (and the result's payload, if any)."""
        channel = await self._open(op, args)
        try:
            while True:
                try:
                    kind, a, b = await channel.next()
                except LinkClosed as exc:
                    raise self._lost(exc) from exc
                if kind == "data":
                    yield b
                elif kind == "result":
                    res = Channel.check(a, b, {})
                    if res.payload:
                        yield res.payload
                    return
        finally:
            if not channel.finished:
                await channel.cancel()

    async def write_file(
        self,
        path: str,
        data: bytes | str | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        parents: bool = False,
    ) -> int:
        """Write atomically (temp file + rename); returns the size written.

        ``data`` may be an async iterable of chunks to stream a big file."""
        args: dict[str, Any] = {"path": path, "parents": parents}
        if mode is not None:
            args["mode"] = mode
        if isinstance(data, str | bytes):
            raw = data.encode() if isinstance(data, str) else data
            if len(raw) <= P.CHUNK:
                return int((await self._call("write_file", args, raw)).value["size"])
            data = _chunks(raw)
        channel = await self._open("write_file", {**args, "more": True})
        await self._send(channel, "body", data)
        return int((await self._finish(channel)).value["size"])

    async def _send(self, channel: Channel, stream: str, chunks: AsyncIterable[bytes]) -> None:
        try:
            await channel.send_stream(stream, chunks)
        except LinkClosed as exc:
            raise self._lost(exc) from exc
        except ConnectionError:
            # The supervisor ended the call early (e.g. ENOSPC mid-write) and closed our
            # send window: stop sending; the caller's _finish raises its real error.
            if channel.conn.closed.is_set():
                raise
        except BaseException:
            await channel.cancel()
            raise

    async def read_files(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Several files at once (concurrent calls on the one link)."""
        contents = await asyncio.gather(*(self.read_file(p) for p in paths))
        return dict(zip(paths, contents, strict=True))

    async def write_files(self, files: Mapping[str, bytes | str], *, parents: bool = True) -> None:
        await asyncio.gather(*(self.write_file(p, d, parents=parents) for p, d in files.items()))

    async def stat(self, path: str) -> FileStat:
        return FileStat.model_validate((await self._call("stat", {"path": path})).value)

    async def exists(self, path: str) -> bool:
        return bool((await self._call("exists", {"path": path})).value)

    async def readdir(self, path: str = ".") -> list[FileStat]:
        return _entries(await self._call("readdir", {"path": path}))

    async def readdir_recursive(
        self, path: str = ".", *, max_entries: int | None = None
    ) -> list[FileStat]:
        """Every entry below ``path``; ``name`` is relative to it. Links are not followed."""
        args: dict[str, Any] = {"path": path}
        if max_entries is not None:
            args["max_entries"] = max_entries
        return _entries(await self._call("readdir_recursive", args))

    async def mkdir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> None:
        await self._call("mkdir", {"path": path, "parents": parents, "exist_ok": exist_ok})

    async def move(self, src: str, dst: str, *, overwrite: bool = False) -> None:
        await self._call("move", {"src": src, "dst": dst, "overwrite": overwrite})

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        await self._call("delete", {"path": path, "recursive": recursive})

    # -- directory trees as tar streams -----------------------------------------

    async def download_tar(self, path: str) -> AsyncIterator[bytes]:
        """A directory as an uncompressed tar stream (members relative to it)."""
        async for chunk in self._download("tar_download", {"path": path}):
            yield chunk

    async def upload_tar(self, path: str, archive: bytes | AsyncIterable[bytes]) -> None:
        """Extract a tar stream (any compression tar detects) into ``path``."""
        chunks = _chunks(archive) if isinstance(archive, bytes) else archive
        channel = await self._open("tar_upload", {"path": path, "more": True})
        await self._send(channel, "body", chunks)
        await self._finish(channel)

    async def upload_dir(self, local_dir: str | os.PathLike[str], path: str) -> None:
        """Copy a host directory into the sandbox (streamed, never whole in memory)."""
        await self.upload_tar(path, _tar_local(Path(local_dir)))

    async def download_dir(self, path: str, local_dir: str | os.PathLike[str]) -> None:
        """Copy a sandbox directory to the host (streamed; members stay inside local_dir)."""
        await _untar_local(self.download_tar(path), Path(local_dir))


_background: set[asyncio.Task[None]] = set()


async def _pump(handle: ProcessHandle, on_event: EventCallback) -> None:
    with contextlib.suppress(SandboxError):
        async for event in handle.events():
            outcome = on_event(event)
            if outcome is not None:
                await outcome


def _entries(res: Result) -> list[FileStat]:
    out: list[FileStat] = []
    for chunk in res.data.get("entries", ()):
        out.extend(FileStat.model_validate(e) for e in json.loads(chunk))
    return out


async def _chunks(raw: bytes) -> AsyncIterator[bytes]:
    view = memoryview(raw)
    for start in range(0, len(view), P.CHUNK):
        yield bytes(view[start : start + P.CHUNK])


class _Pipe:
    """A bounded byte pipe from a thread (tarfile) to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    def write(self, data: bytes) -> int:
        if data:
            asyncio.run_coroutine_threadsafe(self.queue.put(bytes(data)), self.loop).result()
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.queue.put(None), self.loop).result()


async def _tar_local(root: Path) -> AsyncIterator[bytes]:
    if not await asyncio.to_thread(root.is_dir):
        raise FileNotFoundError(f"local directory not found: {root}")
    pipe = _Pipe(asyncio.get_running_loop())
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for entry in sorted(root.iterdir()):
                    tar.add(entry, arcname=entry.name)
        except BaseException as exc:
            failure.append(exc)
        finally:
            pipe.close()

    thread = threading.Thread(target=produce, name="tar-upload", daemon=True)
    thread.start()
    while (chunk := await pipe.queue.get()) is not None:
        yield chunk
    if failure:
        raise failure[0]


async def _untar_local(chunks: AsyncIterator[bytes], dest: Path) -> None:
    """Extract with the 'data' filter: no absolute paths, no escaping links, no devices."""
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()

    def consume() -> None:
        with os.fdopen(read_fd, "rb") as src, tarfile.open(fileobj=src, mode="r|") as tar:
            tar.extractall(dest, filter="data")

    consumer = asyncio.ensure_future(asyncio.to_thread(consume))
    try:
        with os.fdopen(write_fd, "wb") as sink:
            async for chunk in chunks:
                await asyncio.to_thread(sink.write, chunk)
    except BrokenPipeError:
        pass  # the consumer stopped early; its own error is the one to report
    except BaseException:
        # The download failed: the consumer sees a truncated archive; report ours.
        with contextlib.suppress(Exception):
            await consumer
        raise
    await consumer
