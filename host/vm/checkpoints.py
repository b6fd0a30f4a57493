"""Workspace checkpoints on the host's disk: a vm's ``/home/user`` as a gzip'd tar
(``<db dir>/checkpoints/<actor id>/<name>.tar.gz``) plus a JSON sidecar with its
manifest and the vm's session records.

Everything is streamed: the sandbox's tar stream is compressed chunk by chunk into a
temp file that is renamed into place, and a restore reads the file back in chunks,
so the host never holds a workspace in memory. Compression runs in a thread (it is
CPU work; the event loop keeps serving other vms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from orchestrator.errors import AgentVMError, InvalidRequest

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Pieces read back from an archive, and the most a piece may inflate to at once
# (a bound on what a restore holds, whatever the archive's ratio).
_READ = 256 * 1024
_INFLATE_MAX = 1024 * 1024
_LEVEL = 1  # fast: checkpoints are taken often, and workspaces compress well anyway
_memory_root: Path | None = None


class CheckpointNotFound(AgentVMError):
    """No checkpoint of that name on this vm."""

    group = "checkpoint"
    code = "not_found"
    http_status = 404


class CheckpointTooLarge(AgentVMError):
    """The compressed workspace passed ``AGENTVM_CHECKPOINTS_MAX_BYTES``: nothing kept."""

    group = "checkpoint"
    code = "too_large"
    http_status = 413


def check_name(value: Any, field: str = "name") -> str:
    """A checkpoint name: ``[A-Za-z0-9._-]{1,64}`` and not ``.``/``..`` (it is a file name)."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidRequest(f"{field} must match [A-Za-z0-9._-]{{1,64}}", field=field)
    return value


def root_for(db: str | None) -> Path:
    """``<db dir>/checkpoints`` (a temp dir for an in-memory database)."""
    global _memory_root
    if db is None or db == ":memory:" or db.startswith("file:"):
        if _memory_root is None:
            _memory_root = Path(tempfile.mkdtemp(prefix="agentvm-checkpoints-"))
        return _memory_root
    if "://" in db:  # PostgreSQL: no database file to sit next to (AGENTVM_CHECKPOINT_DIR)
        if os.geteuid() == 0:
            return Path("/var/lib/agentvm/checkpoints")
        return Path.home() / ".local" / "share" / "agentvm" / "checkpoints"
    return Path(os.path.abspath(db)).parent / "checkpoints"


def vm_dir(root: Path, actor_id: str) -> Path:
    # Actor ids contain "/" and key characters: hash them into one safe file name.
    return root / hashlib.sha256(actor_id.encode()).hexdigest()[:32]


class CheckpointStore:
    """The checkpoints of one vm (one directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def archive(self, name: str) -> Path:
        return self.dir / f"{name}.tar.gz"

    def sidecar(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    async def write(self, name: str, tar: AsyncIterable[bytes], max_size: int) -> dict[str, Any]:
        """Compress ``tar`` into the checkpoint ``name``; its ``{size, sha256, raw_size}``.
        Replaces an older checkpoint of the same name only once the new one is whole;
        past ``max_size`` compressed bytes it stops (CheckpointTooLarge), keeping nothing."""
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=self.dir)
        f = os.fdopen(fd, "wb")
        comp = zlib.compressobj(_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing
        digest = hashlib.sha256()
        raw = size = 0

        def put(chunk: bytes, final: bool) -> int:
            out = comp.compress(chunk) + (comp.flush() if final else b"")
            digest.update(out)
            f.write(out)
            return len(out)

        try:
            async for chunk in tar:
                raw += len(chunk)
                size += await asyncio.to_thread(put, chunk, False)
                if size > max_size:
                    raise CheckpointTooLarge(
                        f"the workspace compresses to more than {max_size} bytes "
                        "(AGENTVM_CHECKPOINTS_MAX_BYTES)",
                        max_bytes=max_size,
                    )
            size += await asyncio.to_thread(put, b"", True)
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(os.replace, tmp, self.archive(name))
        except BaseException:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return {"size": size, "raw_size": raw, "sha256": digest.hexdigest()}

    async def read(self, name: str) -> AsyncIterator[bytes]:
        """The checkpoint's plain tar stream, in pieces of at most 1 MiB. A thread reads
        and inflates the next four pieces while the caller sends these."""
        try:
            f = await asyncio.to_thread(open, self.archive(name), "rb")
        except FileNotFoundError:
            raise CheckpointNotFound(f"no checkpoint {name!r}") from None
        inflate = zlib.decompressobj(wbits=31)

        def more() -> list[bytes]:
            # The next few pieces (empty at the end); bounded by _INFLATE_MAX each.
            out: list[bytes] = []
            while len(out) < 4:
                if inflate.unconsumed_tail:
                    data = inflate.decompress(inflate.unconsumed_tail, _INFLATE_MAX)
                else:
                    piece = f.read(_READ)
                    if not piece:
                        tail = inflate.flush()
                        return [*out, tail] if tail else out
                    data = inflate.decompress(piece, _INFLATE_MAX)
                if data:
                    out.append(data)
            return out

        try:
            nxt = asyncio.ensure_future(asyncio.to_thread(more))
            while True:
                pending: list[bytes] = await nxt
                if not pending:
                    break
                nxt = asyncio.ensure_future(asyncio.to_thread(more))
                for data in pending:
                    yield data
        finally:
            if not nxt.done():
                with contextlib.suppress(BaseException):
                    await nxt
            f.close()

    def save_sidecar(self, name: str, meta: dict[str, Any]) -> None:
        tmp = self.sidecar(name).with_suffix(".json.part")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.sidecar(name))

    def load_sidecar(self, name: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads(self.sidecar(name).read_text())
        except FileNotFoundError:
            raise CheckpointNotFound(f"no checkpoint {name!r}") from None
        return meta

    def delete(self, name: str) -> None:
        self.archive(name).unlink(missing_ok=True)
        self.sidecar(name).unlink(missing_ok=True)

    def copy_to(self, other: CheckpointStore, name: str) -> None:
        """Give ``other`` this checkpoint (a hard link where the disk allows: no copy)."""
        other.dir.mkdir(parents=True, exist_ok=True)
        for src, dst in ((self.archive(name), other.archive(name)),
                         (self.sidecar(name), other.sidecar(name))):  # fmt: skip
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

    def link_same(self, existing: str, name: str) -> None:
        """Make ``name``'s archive a hard link of ``existing``'s (same bytes: one copy)."""
        tmp = self.dir / f".{name}.link"
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.link(self.archive(existing), tmp)
            os.replace(tmp, self.archive(name))

    def remove_all(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def retained(manifest: dict[str, dict[str, Any]], max_count: int, max_bytes: int) -> list[str]:
    """Names to delete, oldest first, so at most ``max_count`` checkpoints of at most
    ``max_bytes`` in total stay (the newest one always stays)."""
    order = sorted(manifest, key=lambda n: manifest[n]["created_at"])
    total = sum(int(manifest[n]["size"]) for n in order)
    drop: list[str] = []
    while len(order) > 1 and (len(order) > max_count or total > max_bytes):
        name = order.pop(0)
        total -= int(manifest[name]["size"])
        drop.append(name)
    return drop


def now() -> float:
    return time.time()
