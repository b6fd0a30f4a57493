"""The blob store: content-addressed files a caller uploads (``POST /blobs``) and a
run later streams into a sandbox (the vm actor's ``put_blob``) — how a client
sends a local repository without the server opening a caller-chosen host path.

Blobs live in ``<database dir>/blobs/<sha256 hex>``; an upload is streamed to a
temp file and renamed into place, so a blob is never half-written. Bounded: one
blob by ``AGENTVM_MAX_BLOB``, all of them by ``AGENTVM_BLOB_STORE_LIMIT``; a blob
older than ``AGENTVM_BLOB_TTL`` is removed (swept on each upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from orchestrator.errors import AgentVMError, InvalidRequest

BLOB_ID = re.compile(r"^sha256:([0-9a-f]{64})$")
_CHUNK = 256 * 1024


class BlobTooLarge(AgentVMError):
    group = "blob"
    code = "too_large"
    http_status = 413


class BlobStoreFull(AgentVMError):
    group = "blob"
    code = "store_full"
    http_status = 507


class BlobNotFound(AgentVMError):
    group = "blob"
    code = "not_found"
    http_status = 404


def parse_blob_id(value: Any, field: str = "blob") -> str:
    """The hex digest of ``sha256:<hex>``, or :class:`InvalidRequest` naming ``field``."""
    m = BLOB_ID.match(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidRequest(f"{field} must be 'sha256:<64 lowercase hex digits>'", field=field)
    return m.group(1)


class BlobStore:
    """Content-addressed files under ``root``; every method that touches the disk
    runs it in a thread."""

    def __init__(
        self, root: str | os.PathLike[str], *, max_blob: int, limit: int, ttl: float
    ) -> None:
        self.root = Path(root)
        self.max_blob = max_blob
        self.limit = limit
        self.ttl = ttl

    def _path(self, blob_id: str, field: str = "blob") -> Path:
        return self.root / parse_blob_id(blob_id, field)

    def exists(self, blob_id: str) -> bool:
        """Whether the blob is stored (False for a malformed id)."""
        m = BLOB_ID.match(blob_id)
        return m is not None and (self.root / m.group(1)).is_file()

    async def size(self, blob_id: str) -> int:
        path = self._path(blob_id)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {blob_id}", blob=blob_id) from None

    async def put(self, chunks: AsyncIterable[bytes]) -> dict[str, Any]:
        """Store a stream; ``{"blob": "sha256:<hex>", "size": n}``. Past ``max_blob``
        bytes the upload is abandoned (:class:`BlobTooLarge`), nothing kept."""
        await asyncio.to_thread(self._prepare)
        fd, tmp = await asyncio.to_thread(tempfile.mkstemp, dir=self.root, prefix=".upload-")
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_blob:
                        raise BlobTooLarge(
                            f"blob of over {self.max_blob} bytes exceeds AGENTVM_MAX_BLOB",
                            limit=self.max_blob,
                        )
                    digest.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(_flush, f)
            blob_id = f"sha256:{digest.hexdigest()}"
            await asyncio.to_thread(self._commit, tmp, digest.hexdigest(), size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return {"blob": blob_id, "size": size}

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sweep()

    def _sweep(self) -> None:
        """Remove expired blobs and temp files left by a crash mid-upload."""
        now = time.time()
        for entry in self.root.iterdir():
            with contextlib.suppress(OSError):
                age = now - entry.stat().st_mtime
                stale_tmp = entry.name.startswith(".upload-") and age > 3600
                if stale_tmp or (BLOB_ID.match(f"sha256:{entry.name}") and age > self.ttl):
                    entry.unlink()

    def _used(self) -> int:
        total = 0
        for entry in self.root.iterdir():
            if not entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
        return total

    def _commit(self, tmp: str, hexdigest: str, size: int) -> None:
        final = self.root / hexdigest
        if final.exists():
            os.utime(final)  # the same content again: keep it, restart its time to live
            os.unlink(tmp)
            return
        used = self._used()
        if used + size > self.limit:
            raise BlobStoreFull(
                f"the blob store holds {used} bytes; {size} more exceed "
                f"AGENTVM_BLOB_STORE_LIMIT ({self.limit})",
                used=used,
                limit=self.limit,
            )
        os.replace(tmp, final)

    async def read(self, blob_id: str, field: str = "blob") -> AsyncIterator[bytes]:
        """The blob's bytes in chunks (never whole in memory)."""
        path = self._path(blob_id, field)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(
                f"no blob {blob_id} (upload it with POST /blobs; blobs expire after "
                f"{self.ttl / 86400:g} days)",
                blob=blob_id,
            ) from None
        try:
            while chunk := await asyncio.to_thread(f.read, _CHUNK):
                yield chunk
        finally:
            f.close()

    async def delete(self, blob_id: str) -> bool:
        path = self._path(blob_id)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True


def _flush(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


_stores: dict[str, BlobStore] = {}


def blob_store_for(db: str, settings: Any | None = None) -> BlobStore:
    """The one store of the host on database ``db`` (``<db dir>/blobs``; a temp dir
    for an in-memory database), shared by the HTTP routes and the vm actor."""
    if settings is None:
        from .app import HostSettings

        settings = HostSettings()
    in_memory = db == ":memory:" or db.startswith("file:")
    key = db if in_memory else os.path.abspath(db)
    store = _stores.get(key)
    if store is None:
        if in_memory:
            root = Path(tempfile.mkdtemp(prefix="agentvm-blobs-"))
        else:
            root = Path(key).parent / "blobs"
        store = BlobStore(
            root,
            max_blob=settings.max_blob,
            limit=settings.blob_store_limit,
            ttl=settings.blob_ttl,
        )
        _stores[key] = store
    return store
