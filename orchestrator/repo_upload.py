"""Client-side repository upload: a message body whose ``repo`` is a path on the
*caller's* machine is sent as a git bundle to the server's blob store
(``POST /blobs``) and ``repo`` becomes ``blob:sha256:<hex>``, so the server never
opens a path the caller chose (see docs/http.md, "Uploading a local repository").

What is uploaded: a git repository — its committed history (``git bundle create
--all``; uncommitted changes are not included); a plain directory — a one-commit
snapshot of its files (``.gitignore`` honoured); a file — as is (a ``.bundle``).
A URL, a ``blob:`` reference or a path that does not exist locally is sent unchanged.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from .errors import InvalidRequest

_REMOTE = ("http://", "https://", "git://", "ssh://", "git@", "blob:")
_CHUNK = 256 * 1024
_GIT_ID = ["-c", "user.name=agentvm", "-c", "user.email=agentvm@localhost"]


def local_repo(body: Any) -> Path | None:
    """The local path in ``body["repo"]``, if it names one that exists here."""
    if not isinstance(body, dict):
        return None
    repo = body.get("repo")
    if not isinstance(repo, str) or not repo or repo.startswith(_REMOTE) or "\x00" in repo:
        return None
    path = Path(repo).expanduser()
    return path if path.exists() else None


async def _git(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise InvalidRequest(
            f"cannot bundle the local repository: git {args[-1]}: "
            f"{err.decode(errors='replace').strip()[-500:]}",
            field="body.repo",
        )


def _kind(path: Path) -> str:
    return "file" if path.is_file() else "git" if (path / ".git").exists() else "dir"


async def make_bundle(path: Path, tmp: str) -> Path:
    """A git bundle of ``path`` in directory ``tmp`` (or the file itself)."""
    kind = await asyncio.to_thread(_kind, path)
    if kind == "file":
        return path
    out = os.path.join(tmp, "repo.bundle")
    if kind == "git":
        await _git("-C", str(path), "bundle", "create", out, "--all")
        return Path(out)
    # A plain directory: snapshot it into a throwaway repository, then bundle that.
    where = ["--git-dir", os.path.join(tmp, "snapshot.git"), "--work-tree", str(path)]
    await _git(*where, "init", "-q")
    await _git(*where, "add", "-A")
    await _git(*where, *_GIT_ID, "commit", "-q", "--allow-empty", "-m", "snapshot")
    await _git(*where, "bundle", "create", out, "--all")
    return Path(out)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk
    finally:
        f.close()


async def upload_file(http: httpx.AsyncClient, path: Path) -> dict[str, Any]:
    """``POST /blobs`` with the file streamed; the server's ``{"blob", "size"}``."""
    from .remote import raise_for_error

    size = (await asyncio.to_thread(path.stat)).st_size
    resp = await http.post(
        "/blobs",
        content=_chunks(path),
        headers={"content-type": "application/octet-stream", "content-length": str(size)},
    )
    raise_for_error(resp)
    result: dict[str, Any] = resp.json()
    return result


async def upload_local_repo(http: httpx.AsyncClient, body: Any) -> Any:
    """``body`` with a local ``repo`` replaced by the uploaded bundle's reference."""
    repo = body.get("repo") if isinstance(body, dict) else None
    if not isinstance(repo, str) or repo.startswith(_REMOTE):
        return body  # the common case: no file-system look-up, no thread hop
    path = await asyncio.to_thread(local_repo, body)
    if path is None:
        return body
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="agentvm-upload-")
    try:
        bundle = await make_bundle(path, tmp)
        stored = await upload_file(http, bundle)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    return {**body, "repo": f"blob:{stored['blob']}"}
