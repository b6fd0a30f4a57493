"""The vm actor's file actions: read, write, list, stat, move, delete, and whole
directories as tar archives."""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from orchestrator import ActorContext
from orchestrator.definitions import action
from orchestrator.errors import InvalidRequest

from .actions_base import Opts, VmActionsBase, check_content, check_path, sandbox_of, used
from .blob_actions import read_prefix
from .options import parse_call_options

# Upload archives are fed to the sandbox in pieces of this size.
_CHUNK = 256 * 1024


class ReadOptions(Opts):
    # At most this many bytes (the file's beginning): a file written by sandbox code
    # may be any size, and the caller holds what it reads.
    limit: int | None = Field(default=None, gt=0)


class WriteOptions(Opts):
    mode: int | None = Field(default=None, ge=0, le=0o7777)
    parents: bool = False


class WriteFilesOptions(Opts):
    parents: bool = True


class ReaddirOptions(Opts):
    max_entries: int | None = Field(default=None, gt=0)


class MkdirOptions(Opts):
    parents: bool = True
    exist_ok: bool = True


class MoveOptions(Opts):
    overwrite: bool = False


class DeleteOptions(Opts):
    recursive: bool = False


async def plain_tar(archive: bytes) -> AsyncIterator[bytes]:
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


class FileActions(VmActionsBase):
    """Files and directories of the sandbox (paths relative to ``/home/user``)."""

    @action
    @used
    async def read_file(self, c: ActorContext, path: Any, opts: Any = None) -> bytes:
        o = parse_call_options(ReadOptions, opts, "read_file")
        sandbox = await sandbox_of(c)
        if o.limit is None:
            return await sandbox.read_file(check_path(path))
        return await read_prefix(sandbox, check_path(path), o.limit)

    @action
    @used
    async def write_file(self, c: ActorContext, path: Any, content: Any, opts: Any = None) -> None:
        o = parse_call_options(WriteOptions, opts, "write_file")
        data = check_content(content)
        sandbox = await sandbox_of(c)
        await sandbox.write_file(check_path(path), data, mode=o.mode, parents=o.parents)

    @action
    @used
    async def read_files(self, c: ActorContext, paths: Any) -> dict[str, bytes]:
        if not isinstance(paths, list):
            raise InvalidRequest("paths must be a list of strings", field="paths")
        return await (await sandbox_of(c)).read_files([check_path(p, "paths") for p in paths])

    @action
    @used
    async def write_files(self, c: ActorContext, files: Any, opts: Any = None) -> None:
        o = parse_call_options(WriteFilesOptions, opts, "write_files")
        if not isinstance(files, dict):
            raise InvalidRequest("files must be an object {path: content}", field="files")
        checked = {check_path(p, "files"): check_content(d, f"files.{p}") for p, d in files.items()}
        await (await sandbox_of(c)).write_files(checked, parents=o.parents)

    @action
    @used
    async def readdir(self, c: ActorContext, path: Any = ".") -> list[dict[str, Any]]:
        return [e.model_dump() for e in await (await sandbox_of(c)).readdir(check_path(path))]

    @action
    @used
    async def readdir_recursive(
        self, c: ActorContext, path: Any = ".", opts: Any = None
    ) -> list[dict[str, Any]]:
        o = parse_call_options(ReaddirOptions, opts, "readdir_recursive")
        sandbox = await sandbox_of(c)
        entries = await sandbox.readdir_recursive(check_path(path), max_entries=o.max_entries)
        return [e.model_dump() for e in entries]

    @action
    @used
    async def stat(self, c: ActorContext, path: Any) -> dict[str, Any]:
        return (await (await sandbox_of(c)).stat(check_path(path))).model_dump()

    @action
    @used
    async def exists(self, c: ActorContext, path: Any) -> bool:
        return await (await sandbox_of(c)).exists(check_path(path))

    @action
    @used
    async def mkdir(self, c: ActorContext, path: Any, opts: Any = None) -> None:
        o = parse_call_options(MkdirOptions, opts, "mkdir")
        sandbox = await sandbox_of(c)
        await sandbox.mkdir(check_path(path), parents=o.parents, exist_ok=o.exist_ok)

    @action
    @used
    async def move(self, c: ActorContext, src: Any, dst: Any, opts: Any = None) -> None:
        o = parse_call_options(MoveOptions, opts, "move")
        sandbox = await sandbox_of(c)
        await sandbox.move(check_path(src, "src"), check_path(dst, "dst"), overwrite=o.overwrite)

    @action
    @used
    async def delete_file(self, c: ActorContext, path: Any, opts: Any = None) -> None:
        o = parse_call_options(DeleteOptions, opts, "delete_file")
        await (await sandbox_of(c)).delete(check_path(path), recursive=o.recursive)

    @action
    @used
    async def upload_dir(self, c: ActorContext, path: Any, archive: Any) -> None:
        """Extract a tar archive (bytes; any compression tar detects) into ``path``."""
        if not isinstance(archive, bytes):
            raise InvalidRequest("archive must be tar bytes", field="archive")
        await (await sandbox_of(c)).upload_tar(check_path(path), plain_tar(archive))

    @action
    @used
    async def download_dir(self, c: ActorContext, path: Any) -> bytes:
        """The directory's contents as an uncompressed tar archive (bytes)."""
        sandbox = await sandbox_of(c)
        return b"".join([chunk async for chunk in sandbox.download_tar(check_path(path))])
