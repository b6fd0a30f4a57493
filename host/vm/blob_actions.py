"""The vm actor's ``put_blob`` — stream a blob of the host's blob store (an uploaded
repository bundle) into the sandbox; orchestrators name the blob, never a host path —
and bounded reads of sandbox files."""

from __future__ import annotations

from typing import Any

from host.blobs import blob_store_for, parse_blob_id
from host.sandbox import Sandbox
from orchestrator import ActorContext
from orchestrator.definitions import action
from orchestrator.errors import InvalidRequest

from .actions_base import VmActionsBase, sandbox_of, used


async def read_prefix(sandbox: Sandbox, path: str, limit: int) -> bytes:
    """The first ``limit`` bytes of a file; the rest is never read into the host."""
    parts: list[bytes] = []
    size = 0
    stream = sandbox.read_file_stream(path)
    try:
        async for chunk in stream:
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
            if size >= limit:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return b"".join(parts)


class BlobActions(VmActionsBase):
    """``put_blob``: uploaded blobs into the sandbox."""

    @action
    @used
    async def put_blob(self, c: ActorContext, blob_id: Any, path: Any) -> dict[str, Any]:
        """Write blob ``sha256:<hex>`` to ``path`` in the sandbox (parents created);
        ``{"path", "size"}``. Streamed: the host never holds the whole blob."""
        parse_blob_id(blob_id, "blob_id")
        if not isinstance(path, str) or not path:
            raise InvalidRequest("path must be a non-empty string", field="path")
        # The store of the attached engine's database: the one POST /blobs writes to.
        blobs = self.blobs or blob_store_for(self.manager.db or ":memory:")
        await blobs.size(blob_id)  # BlobNotFound before anything starts in the sandbox
        sandbox = await sandbox_of(c)
        size = await sandbox.write_file(path, blobs.read(blob_id, "blob_id"), parents=True)
        return {"path": path, "size": size}
