"""Helpers the built-in orchestrators share: running one agent task in a vm,
and getting a repository into a vm."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable
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


# Seconds the clean-up of a session (cancel its prompt, close it) may take.
CLEANUP_TIMEOUT = 30.0


class AgentSession:
    """One agent session in a vm, prompted one or more times (fixBug prompts the same
    session again with the failing tests). Not durable: a session does not survive a
    replay, so a workflow opens it lazily inside a step and closes it when done."""

    def __init__(
        self,
        vm: ActorHandle,
        *,
        agent_type: str = DEFAULT_AGENT,
        cwd: str = REPO_DIR,
        model: str | None = None,
        env: dict[str, str] | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self.vm = vm
        # True while the host shuts down: leave the agent alone then (the run resumes
        # after the restart; a clean-up call into a stopping vm would only stall).
        self.stopping = stopping or (lambda: False)
        self.agent_type = agent_type
        self.options: dict[str, Any] = {"cwd": cwd}
        if model:
            self.options["model"] = model
        if env:
            self.options["env"] = env
        self.session_id: str | None = None

    @property
    def open(self) -> bool:
        return self.session_id is not None

    async def prompt(self, text: str) -> dict[str, Any]:
        """Send ``text`` (opening the session first if needed) → ``{session_id,
        stop_reason, text, usage}``. Cancelled (the run is cancelled), it cancels the
        agent's turn and closes the session before re-raising; failed, it closes the
        session so that a retry starts a fresh one."""
        if self.session_id is None:
            info = await self.vm.create_session(self.agent_type, self.options)
            self.session_id = str(info["session_id"])
        sid = self.session_id
        try:
            reply = await self.vm.send_prompt(sid, text)
        except asyncio.CancelledError:
            if not self.stopping():
                await self._shielded(self._cancel_and_close(sid))
            raise
        except Exception:
            await self._shielded(self.close())
            raise
        return {"session_id": sid, **reply}

    async def _cancel_and_close(self, sid: str) -> None:
        with contextlib.suppress(Exception):
            await self.vm.cancel_prompt(sid)
        await self.close()

    async def close(self) -> None:
        """Close the session (kills the agent process); never raises."""
        sid, self.session_id = self.session_id, None
        if sid is not None and not self.stopping():
            with contextlib.suppress(Exception):
                await self.vm.close_session(sid)

    @staticmethod
    async def _shielded(coro: Any) -> None:
        """Run clean-up to its end even while this task is being cancelled, within a
        deadline (a dead vm must not hold the run's cancellation up)."""
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.wait_for(asyncio.shield(task), CLEANUP_TIMEOUT)
        except asyncio.CancelledError:
            raise  # cancelled again meanwhile: the clean-up goes on by itself
        except Exception:
            pass  # timed out or failed: the vm's own idle checks close the session


async def run_agent_task(
    vm: ActorHandle,
    prompt: str,
    *,
    agent_type: str = DEFAULT_AGENT,
    cwd: str = REPO_DIR,
    model: str | None = None,
    env: dict[str, str] | None = None,
    stopping: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Create a session, send one prompt and close the session — all inside the
    caller's step, because a session does not survive a replay. Cancelling the
    caller cancels the agent's turn and closes the session (not while the host stops:
    ``stopping``, e.g. ``lambda: ctx.engine_stopping``)."""
    session = AgentSession(
        vm, agent_type=agent_type, cwd=cwd, model=model, env=env, stopping=stopping
    )
    try:
        return await session.prompt(prompt)
    finally:
        await AgentSession._shielded(session.close())


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
    if is_remote(repo):
        # Emptying ``dest`` and cloning are one exec: a round trip less per run.
        script = 'rm -rf "$1" && exec git clone --quiet "$2" "$1"'
        return await vm.exec(["sh", "-c", script, "sh", dest, repo], {"timeout": 600})
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
            await vm.exec(["rm", "-rf", dest])
            await vm.mkdir(dest, {"parents": True})
            await vm.upload_dir(dest, await asyncio.to_thread(_tar_dir, path))
            return {"exit_code": 0, "stdout": "", "stderr": "", "source": "directory"}
    # Empty ``dest``, clone, drop the staged bundle: one exec (three round trips were).
    script = 'rm -rf "$1" && git clone --quiet "$2" "$1"; rc=$?; rm -f "$2"; exit $rc'
    return await vm.exec(["sh", "-c", script, "sh", dest, staging], {"timeout": 600})


async def read_capped(vm: ActorHandle, path: str, limit: int = MAX_AGENT_FILE) -> str:
    """A file an agent wrote, as text, at most ``limit`` bytes of it (the host never
    holds more of an agent-written file than that); a longer one is cut and says so."""
    content = await vm.read_file(path, {"limit": limit + 1})
    data = content if isinstance(content, bytes) else str(content).encode()
    text = data[:limit].decode(errors="replace")
    if len(data) > limit:
        text += f"\n[... cut at {limit} bytes]"
    return text
