"""Helpers the built-in orchestrators share: running one agent task in a vm,
and getting a repository into a vm."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..client import ActorHandle
from ..errors import InvalidRequest
from ._repo import RepoPolicy, blob_id_of, check_repo, is_blob

REPO_DIR = "/home/user/repo"
DEFAULT_AGENT = "coding-agent"
# The most of an agent-written file (a review, a summary) a built-in reads back: it
# goes into a step result, a prompt and a response, all stored.
MAX_AGENT_FILE = 32 * 1024


async def run_agent_task(
    vm: ActorHandle,
    prompt: str,
    *,
    agent_type: str = DEFAULT_AGENT,
    cwd: str = REPO_DIR,
    model: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create a session, send one prompt and close the session — all inside the
    caller's step, because a session does not survive a replay."""
    options: dict[str, Any] = {"cwd": cwd}
    if model:
        options["model"] = model
    if env:
        options["env"] = env
    session = await vm.create_session(agent_type, options)
    try:
        reply = await vm.send_prompt(session["session_id"], prompt)
    finally:
        await vm.close_session(session["session_id"])
    return {"session_id": session["session_id"], **reply}


def is_remote(repo: str) -> bool:
    return repo.startswith(("http://", "https://", "git://", "ssh://", "git@"))


def vm_input_for(repo: str | None) -> dict[str, Any] | None:
    """A vm that clones from a URL may reach that URL's host only (through the host's
    egress proxy, docs/egress.md); a local repository needs no network at all."""
    if not repo or not is_remote(repo):
        return None
    host = urlsplit(repo).hostname if repo.startswith(("http://", "https://")) else None
    if not host:
        raise InvalidRequest(
            f"only http(s) repository URLs can be cloned (through the egress proxy): {repo}",
            field="repo",
        )
    return {"network": {"allow": [host]}}


async def _git_bundle(path: Path) -> bytes:
    with tempfile.TemporaryDirectory(prefix="agentvm-bundle-") as tmp:
        target = os.path.join(tmp, "repo.bundle")
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            str(path),
            "bundle",
            "create",
            target,
            "--all",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise InvalidRequest(
                f"cannot bundle git repository {path}: {err.decode(errors='replace').strip()}",
                field="repo",
            )
        return await asyncio.to_thread(Path(target).read_bytes)


def _tar_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for child in sorted(path.iterdir()):
            tar.add(child, arcname=child.name)
    return buf.getvalue()


def _local_kind(path: Path) -> str:
    if path.is_file():
        return "file"
    if (path / ".git").exists():
        return "git"
    if path.is_dir():
        return "dir"
    raise InvalidRequest(f"repository {str(path)!r} is not a file or directory", field="repo")


async def put_repo(
    vm: ActorHandle, repo: str, dest: str = REPO_DIR, *, policy: RepoPolicy | None = None
) -> dict[str, Any]:
    """Get ``repo`` into the vm at ``dest``: clone a URL inside the vm (it needs a
    network); clone an uploaded bundle (``blob:sha256:...``, streamed in by the vm
    actor from the host's blob store); or upload a host path — a git repository (as
    a git bundle), a ``.bundle`` file or a plain directory — but only one inside
    ``policy``'s roots (default: none; see :class:`RepoPolicy`). Safe to run again
    after a crash."""
    await vm.exec(["rm", "-rf", dest])
    if is_remote(repo):
        return await vm.exec(["git", "clone", "--quiet", repo, dest], {"timeout": 600})
    staging = "/home/user/.agentvm/repo.bundle"
    if is_blob(repo):
        check_repo(repo, policy, "repo")
        await vm.put_blob(blob_id_of(repo), staging)
    else:
        # Checked again here, not only at send time: the roots may have changed, and
        # the real path (symlinks resolved) is what gets read.
        real = await asyncio.to_thread(check_repo, repo, policy, "repo")
        assert real is not None
        path = Path(real)
        kind = await asyncio.to_thread(_local_kind, path)
        if kind == "file":
            data = await asyncio.to_thread(path.read_bytes)
            await vm.write_file(staging, data, {"parents": True})
        elif kind == "git":
            await vm.write_file(staging, await _git_bundle(path), {"parents": True})
        else:
            await vm.mkdir(dest, {"parents": True})
            await vm.upload_dir(dest, await asyncio.to_thread(_tar_dir, path))
            return {"exit_code": 0, "stdout": "", "stderr": "", "source": "directory"}
    result = await vm.exec(["git", "clone", "--quiet", staging, dest], {"timeout": 600})
    await vm.exec(["rm", "-f", staging])
    return result


async def read_capped(vm: ActorHandle, path: str, limit: int = MAX_AGENT_FILE) -> str:
    """A file an agent wrote, as text, at most ``limit`` bytes of it (the host never
    holds more of an agent-written file than that); a longer one is cut and says so."""
    content = await vm.read_file(path, {"limit": limit + 1})
    data = content if isinstance(content, bytes) else str(content).encode()
    text = data[:limit].decode(errors="replace")
    if len(data) > limit:
        text += f"\n[... cut at {limit} bytes]"
    return text
