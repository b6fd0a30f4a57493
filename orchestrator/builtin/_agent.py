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

from ..client import ActorHandle
from ..errors import InvalidRequest

REPO_DIR = "/home/user/repo"
DEFAULT_AGENT = "coding-agent"


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
    """A vm that clones from a URL needs a network; a local repository does not."""
    return {"network": "bridge"} if repo and is_remote(repo) else None


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


def _local_kind(repo: str) -> tuple[str, Path]:
    path = Path(repo).expanduser()
    if path.is_file():
        return "file", path
    if (path / ".git").exists():
        return "git", path
    if path.is_dir():
        return "dir", path
    raise InvalidRequest(f"repository {repo!r} is neither a URL nor an existing path", field="repo")


async def put_repo(vm: ActorHandle, repo: str, dest: str = REPO_DIR) -> dict[str, Any]:
    """Get ``repo`` into the vm at ``dest``: clone a URL inside the vm (it needs a
    network), or upload a local git repository (as a git bundle), a ``.bundle``
    file, or a plain directory from the host. Safe to run again after a crash."""
    await vm.exec(["rm", "-rf", dest])
    if is_remote(repo):
        return await vm.exec(["git", "clone", "--quiet", repo, dest], {"timeout": 600})
    kind, path = await asyncio.to_thread(_local_kind, repo)
    staging = "/home/user/.agentvm/repo.bundle"
    if kind == "file":
        await vm.write_file(staging, await asyncio.to_thread(path.read_bytes), {"parents": True})
    elif kind == "git":
        await vm.write_file(staging, await _git_bundle(path), {"parents": True})
    else:
        await vm.mkdir(dest, {"parents": True})
        await vm.upload_dir(dest, await asyncio.to_thread(_tar_dir, path))
        return {"exit_code": 0, "stdout": "", "stderr": "", "source": "directory"}
    result = await vm.exec(["git", "clone", "--quiet", staging, dest], {"timeout": 600})
    await vm.exec(["rm", "-f", staging])
    return result
