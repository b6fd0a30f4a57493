"""Git in the vm for the fix workflows: a repository with a known base commit, the
fix as a commit and a ``git format-patch`` mbox, and the fix fetched back into a
host repository as a branch (never touching that repository's working tree)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from ..client import ActorHandle
from ..errors import AgentVMError, InvalidRequest
from ._agent import REPO_DIR, put_repo
from ._repo import RepoPolicy, check_repo

# The most of a diff / patch a result carries (results are stored and sent back).
MAX_DIFF = 512 * 1024
# The largest fix bundle fetched from a vm into a host repository.
MAX_BUNDLE = 64 * 2**20
FIX_BUNDLE = "/home/user/.agentvm/fix.bundle"
FIX_REF = "agentvm-fix"
_AS_AGENTVM = ["-c", "user.name=agentvm", "-c", "user.email=agentvm@localhost"]
# A plain directory becomes a commit with fixed metadata: the same base sha each time.
_FIXED_DATE = "2000-01-01T00:00:00Z"


class DeliveryFailed(AgentVMError):
    """The fix could not be written back to the source repository."""

    group = "run"
    code = "delivery_failed"
    http_status = 500


async def _git(vm: ActorHandle, *args: str, **opts: Any) -> dict[str, Any]:
    result: dict[str, Any] = await vm.exec(["git", *args], {"cwd": REPO_DIR, **opts})
    return result


async def prepare_repo(vm: ActorHandle, repo: str, policy: RepoPolicy | None) -> dict[str, Any]:
    """Put ``repo`` into the vm (:func:`put_repo`) as a git repository (a plain
    directory gets one commit) → ``{"base": sha}``, the commit the fix starts from."""
    put = await put_repo(vm, repo, policy=policy)
    if put.get("exit_code", 0) != 0:
        raise InvalidRequest(
            f"could not get the repository into the vm: {str(put.get('stderr', ''))[-2000:]}",
            field="repo",
        )
    # A git repository (the usual case) answers its base in this one round trip.
    head = await _git(vm, "rev-parse", "--verify", "HEAD")
    if head["exit_code"] != 0:
        env = {"GIT_AUTHOR_DATE": _FIXED_DATE, "GIT_COMMITTER_DATE": _FIXED_DATE}
        await _git(vm, "init", "-q")
        await _git(vm, "add", "-A")
        await _git(vm, *_AS_AGENTVM, "commit", "-qm", "snapshot", "--allow-empty", env=env)
        head = await _git(vm, "rev-parse", "HEAD")
    if head["exit_code"] != 0:
        raise InvalidRequest(f"not a git repository: {head['stderr'][-500:]}", field="repo")
    return {"base": head["stdout"].strip()}


async def ensure_repo(vm: ActorHandle, repo: str, policy: RepoPolicy | None, base: str) -> None:
    """Before an agent works: if the vm lost the repository (a retried run whose vm
    was destroyed when it failed, a vm lost for good), put it back."""
    if await vm.exists(f"{REPO_DIR}/.git"):
        if (await _git(vm, "cat-file", "-e", f"{base}^{{commit}}"))["exit_code"] == 0:
            return
    await prepare_repo(vm, repo, policy)


async def diff_since(vm: ActorHandle, base: str) -> str:
    """Tracked changes since ``base`` (committed or not), capped at :data:`MAX_DIFF`."""
    out = str((await _git(vm, "diff", base))["stdout"])
    return out if len(out) <= MAX_DIFF else out[:MAX_DIFF] + f"\n[... cut at {MAX_DIFF} bytes]"


async def commit_fix(vm: ActorHandle, base: str, message: str) -> dict[str, Any]:
    """Commit the tracked changes (``commit -a``; safe to run again) and return
    ``{"commit", "patch"}``: the ``git format-patch`` mbox of ``base..HEAD`` (None
    when nothing changed or the patch is over :data:`MAX_DIFF`)."""
    # Commit and read HEAD in one exec (a round trip less on every run's end); the
    # message goes in as an argument, never into the script. Commit exits 1 when
    # there is nothing to commit: HEAD is then still the base.
    script = 'git "$@" >/dev/null 2>&1; git rev-parse HEAD'
    committed = await vm.exec(
        ["sh", "-c", script, "sh", *_AS_AGENTVM, "commit", "-qam", message], {"cwd": REPO_DIR}
    )
    head = str(committed["stdout"]).strip()
    if not head or head == base:
        return {"commit": None, "patch": None}
    patch = await _git(vm, "format-patch", "--stdout", f"{base}..HEAD")
    text = str(patch["stdout"])
    if patch["exit_code"] != 0 or patch.get("truncated") or len(text) > MAX_DIFF:
        return {"commit": head, "patch": None, "patch_error": "the patch is too large to keep"}
    return {"commit": head, "patch": text}


async def deliver_branch(
    vm: ActorHandle, repo: str, policy: RepoPolicy | None, base: str, branch: str
) -> dict[str, Any]:
    """Write the vm's fix (``base..HEAD``) as ``branch`` into the host repository
    ``repo``: a git bundle of the fix read from the vm (at most :data:`MAX_BUNDLE`),
    then ``git fetch`` of it into ``refs/heads/<branch>`` — no checkout, so the
    working tree is untouched. The bundle comes from a sandbox: git checks every
    object (``fetch.fsckObjects``) and only our one ref is taken."""
    real = await asyncio.to_thread(check_repo, repo, policy, "body.repo")
    if real is None:
        raise InvalidRequest("deliver 'branch' needs a local repository", field="body.deliver")
    made = await _git(vm, "branch", "-f", FIX_REF, "HEAD")
    bundle = await _git(vm, "bundle", "create", FIX_BUNDLE, FIX_REF, f"^{base}")
    if made["exit_code"] != 0 or bundle["exit_code"] != 0:
        raise DeliveryFailed(f"could not bundle the fix: {bundle['stderr'][-1000:]}")
    data = await vm.read_file(FIX_BUNDLE, {"limit": MAX_BUNDLE + 1})
    if len(data) > MAX_BUNDLE:
        raise DeliveryFailed(f"the fix bundle is over {MAX_BUNDLE} bytes", limit=MAX_BUNDLE)
    with tempfile.TemporaryDirectory(prefix="agentvm-fix-") as tmp:
        path = os.path.join(tmp, "fix.bundle")
        await asyncio.to_thread(Path(path).write_bytes, bytes(data))
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-c",
            "fetch.fsckObjects=true",
            "-c",
            "transfer.fsckObjects=true",
            "-C",
            real,
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            path,
            f"+refs/heads/{FIX_REF}:refs/heads/{branch}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        try:
            async with asyncio.timeout(300):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DeliveryFailed("git fetch of the fix timed out") from None
    if proc.returncode != 0:
        raise DeliveryFailed(
            f"git fetch of the fix into {real} failed: {err.decode(errors='replace')[-1000:]}",
            repo=real,
        )
    return {"branch": branch, "repo": real}
