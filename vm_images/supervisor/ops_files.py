"""Operations on files. Relative paths resolve against /home/user."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat as st
import tempfile
from typing import Any

from . import protocol as P
from .errors import OpError, from_os_error
from .link import Channel, Handler, Link, Reply
from .procs import Proc, ProcessTable, kill_tree, resolve

# Files up to this size are returned inside the RESULT frame (one frame, low latency).
INLINE_READ = 256 * 1024
# Directory entries per DATA frame of a listing.
ENTRIES_PER_FRAME = 512
DEFAULT_MAX_ENTRIES = 100_000


def _path(args: dict[str, Any], key: str = "path") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise OpError("EINVAL", f"'{key}' must be a non-empty string")
    return resolve(value)


def _kind(mode: int) -> str:
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISDIR(mode):
        return "dir"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def _describe(path: str, name: str, info: os.stat_result) -> dict[str, Any]:
    return {
        "name": name,
        "path": path,
        "type": _kind(info.st_mode),
        "size": info.st_size,
        "mode": st.S_IMODE(info.st_mode),
        "mtime": info.st_mtime,
    }


def _checked(path: str, call: Any, *args: Any) -> Any:
    """Run an os call, turning OSError into a wire error that names ``path``."""
    try:
        return call(*args)
    except OSError as exc:
        raise from_os_error(exc, path) from exc


def _max_size(args: dict[str, Any]) -> int | None:
    value = args.get("max_size")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise OpError("EINVAL", "'max_size' must be a non-negative integer")
    return value


def _too_big(path: str, limit: int) -> OpError:
    return OpError("EFBIG", f"file is larger than {limit} bytes: {path}", path)


async def op_read_file(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    """A regular file's bytes (never a FIFO or device: those could block or never end);
    ``max_size`` refuses bigger files up front and stops one that grows past it."""
    path = _path(args)
    limit = _max_size(args)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; cleared below.
    fd = _checked(path, os.open, path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if st.S_ISDIR(info.st_mode):
            raise OpError("EISDIR", f"is a directory: {path}", path)
        if not st.S_ISREG(info.st_mode):
            raise OpError("EINVAL", f"not a regular file: {path}", path)
        os.set_blocking(fd, True)
        if limit is not None and info.st_size > limit:
            raise _too_big(path, limit)
        if info.st_size <= INLINE_READ:
            data = _checked(path, os.read, fd, INLINE_READ + 1)
            if limit is not None and len(data) > limit:
                raise _too_big(path, limit)
            if len(data) <= INLINE_READ:
                return {"size": len(data)}, data
            await ch.send_data("body", data)
            total = len(data)
        else:
            total = 0
        while True:
            # Local file reads are short; doing them inline keeps the hot path simple.
            chunk = _checked(path, os.read, fd, P.CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if limit is not None and total > limit:
                raise _too_big(path, limit)
            await ch.send_data("body", chunk)
        return {"size": total, "streamed": True}, b""
    finally:
        os.close(fd)


async def op_write_file(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    """Write to a temporary file beside the target and rename it: never half-written."""
    path = _path(args)
    parent = os.path.dirname(path) or "/"
    if args.get("parents"):
        _checked(parent, os.makedirs, parent, 0o755, True)
    mode = args.get("mode")
    if mode is None:
        try:
            mode = st.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o644
    fd, tmp = _checked(path, tempfile.mkstemp, ".agentvm-", ".tmp", parent)
    try:
        total = 0
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            total += len(payload)
            if args.get("more"):
                while True:
                    stream, data = await ch.recv()
                    if stream is None:
                        raise OpError("ECANCELED", f"upload of {path} interrupted", path)
                    if data is None:
                        break
                    fh.write(data)
                    total += len(data)
        os.chmod(tmp, int(mode))
        _checked(path, os.replace, tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return {"size": total}, b""


async def op_stat(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    path = _path(args)
    info = _checked(path, os.stat, path)
    return _describe(path, os.path.basename(path.rstrip("/")) or "/", info), b""


async def op_exists(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    return os.path.lexists(_path(args)), b""  # noqa: ASYNC240


async def _send_entries(ch: Channel, entries: list[dict[str, Any]]) -> None:
    await ch.send_data("entries", json.dumps(entries, separators=(",", ":")).encode())


async def op_readdir(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    path = _path(args)
    entries: list[dict[str, Any]] = []
    with _checked(path, os.scandir, path) as it:
        for entry in it:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while listing
            entries.append(_describe(entry.path, entry.name, info))
    entries.sort(key=lambda e: e["name"])
    for start in range(0, len(entries), ENTRIES_PER_FRAME):
        await _send_entries(ch, entries[start : start + ENTRIES_PER_FRAME])
    return {"count": len(entries)}, b""


async def op_readdir_recursive(
    link: Link, ch: Channel, args: dict[str, Any], payload: bytes
) -> Reply:
    """Depth-first listing; ``name`` is the path relative to the root. Never follows links."""
    root = _path(args)
    limit = int(args.get("max_entries") or DEFAULT_MAX_ENTRIES)
    _checked(root, os.scandir, root).close()
    batch: list[dict[str, Any]] = []
    count = 0
    truncated = False
    stack = [root]
    while stack and not truncated:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished subdirectory
        subdirs = []
        for entry in items:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if count >= limit:
                truncated = True
                break
            relative = os.path.relpath(entry.path, root)  # noqa: ASYNC240 (pure string op)
            batch.append(_describe(entry.path, relative, info))
            count += 1
            if st.S_ISDIR(info.st_mode):
                subdirs.append(entry.path)
            if len(batch) >= ENTRIES_PER_FRAME:
                await _send_entries(ch, batch)
                batch = []
        stack.extend(reversed(subdirs))
    if batch:
        await _send_entries(ch, batch)
    return {"count": count, "truncated": truncated}, b""


async def op_mkdir(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    path = _path(args)
    mode = int(args.get("mode") or 0o755)
    if args.get("parents", True):
        _checked(path, os.makedirs, path, mode, bool(args.get("exist_ok", True)))
    else:
        _checked(path, os.mkdir, path, mode)
    return None, b""


async def op_move(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    src, dst = _path(args, "src"), _path(args, "dst")
    _checked(src, os.lstat, src)
    if os.path.lexists(dst) and not args.get("overwrite"):  # noqa: ASYNC240
        raise OpError("EEXIST", f"destination exists: {dst}", dst)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: e.g. home volume -> /tmp tmpfs
            raise from_os_error(exc, dst) from exc
        _checked(dst, shutil.move, src, dst)
    return None, b""


async def op_delete(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    path = _path(args)
    info = _checked(path, os.lstat, path)
    if st.S_ISDIR(info.st_mode):
        if args.get("recursive"):
            _checked(path, shutil.rmtree, path)
        else:
            _checked(path, os.rmdir, path)
    else:
        _checked(path, os.unlink, path)
    return None, b""


def make_tar_handlers(table: ProcessTable) -> dict[str, Handler]:
    """tar runs as a child (it is in every Debian base) so archives stream both ways."""

    async def start_tar(argv: list[str], cwd: str, ch: Channel | None) -> tuple[Proc, bytearray]:
        proc, missing = table.start({"argv": argv, "cwd": cwd}, stdin=True, listed=False)
        if proc is None:
            raise OpError("ENOENT", missing.strip(), "tar")
        errors = bytearray()

        async def sink(stream: str, data: bytes) -> None:
            if stream == "stdout" and ch is not None:
                await ch.send_data("body", data)
            elif len(errors) < 64 * 1024:
                errors.extend(data)

        proc.sink = sink
        await table.attach_pipes(proc)
        return proc, errors

    async def finish(proc: Proc, errors: bytearray, path: str) -> None:
        code = await asyncio.shield(proc.done)
        if code != 0:
            message = errors.decode(errors="replace").strip()
            raise OpError("EIO", f"tar failed ({code}): {message}", path)

    async def op_tar_download(
        link: Link, ch: Channel, args: dict[str, Any], payload: bytes
    ) -> Reply:
        """Stream a directory as an uncompressed tar archive (entries relative to it)."""
        path = _path(args)
        if not st.S_ISDIR(_checked(path, os.stat, path).st_mode):
            raise OpError("ENOTDIR", f"not a directory: {path}", path)
        proc, errors = await start_tar(["tar", "-cf", "-", "."], path, ch)
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await finish(proc, errors, path)
        except asyncio.CancelledError:
            kill_tree(proc.pid)
            raise
        return {"size": proc.bytes_read}, b""

    async def op_tar_upload(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        """Extract a tar stream from the host into a directory (created if missing)."""
        path = _path(args)
        _checked(path, os.makedirs, path, 0o755, True)
        proc, errors = await start_tar(["tar", "--no-same-owner", "-xf", "-"], path, None)
        stdin = proc.stdin
        assert stdin is not None
        try:
            try:
                stdin.write(payload)
                await stdin.drain()
                while args.get("more"):
                    stream, data = await ch.recv()
                    if stream is None:
                        raise OpError("ECANCELED", f"upload into {path} interrupted", path)
                    if data is None:
                        break
                    stdin.write(data)
                    await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # tar stopped reading: its exit status says why
            stdin.close()
            await finish(proc, errors, path)
        except BaseException:
            kill_tree(proc.pid)
            raise
        return None, b""

    return {"tar_download": op_tar_download, "tar_upload": op_tar_upload}


HANDLERS: dict[str, Handler] = {
    "read_file": op_read_file,
    "write_file": op_write_file,
    "stat": op_stat,
    "exists": op_exists,
    "readdir": op_readdir,
    "readdir_recursive": op_readdir_recursive,
    "mkdir": op_mkdir,
    "move": op_move,
    "delete": op_delete,
}


def make_handlers(table: ProcessTable) -> dict[str, Handler]:
    return {**HANDLERS, **make_tar_handlers(table)}
