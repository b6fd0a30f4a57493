"""``automator``: the ``fixBug`` run — clone, let an agent fix, run the tests, and
prompt the agent again with the failing output until they pass.

Send ``{"repo": url-or-path, "issue": "...", "test_command": "..."}`` to the
``fixBug`` queue; each message is a run (up to 4 at once per key). A run gets its
own vm (key ``fix-<run id>`` unless ``vm_key`` is given) and:

1. ``clone-repo``: the repository into the vm; its HEAD is the fix's base.
2. ``fix-bug`` / ``run-tests``: the agent's turn, then the tests. Failing, the
   **same session** is prompted again with the test output (``fix-bug-2``,
   ``run-tests-2``, ... up to ``max_attempts``, default 3): every attempt is a
   durable step. A session does not survive a replay: after a host crash between
   attempts the next attempt opens a new session whose prompt carries the issue and
   the last test output instead.
3. ``make-patch``: the changes as a commit in the vm (``Fix: <issue's first
   line>``) and its ``git format-patch`` mbox, served by
   ``GET /actors/automator/{key}/runs/{id}/patch``.
4. ``deliver-branch`` (``"deliver": "branch"``, a local repository, tests
   passing): the commit fetched into the source repository as branch
   ``agentvm/fix-<run id>``, working tree untouched.

The result: ``fixed``, ``attempts``, ``tests_exit_code``, ``test_output``,
``diff``, ``patch``, ``summary`` (the agent's last text), ``usage`` (tokens) and
``branch``. Tests still failing after the last attempt is a *completed* run with
``fixed: false``; a run fails only when the machinery does. The run's vm is
destroyed when the run ends (completed, failed or cancelled) unless ``keep_vm``:
then it expires after ``AGENTVM_KEEP_VM_HOURS``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..definitions import ActorDefinition, actor, event, queue
from ..workflow import WorkflowContext
from ._agent import DEFAULT_AGENT, REPO_DIR, AgentSession, vm_input_for
from ._git import commit_fix, deliver_branch, diff_since, ensure_repo, prepare_repo
from ._input import parse
from ._repo import RepoPolicy, RepoRequest, is_blob, is_remote
from ._runs import (
    BUILTIN_CONCURRENCY,
    DEFAULT_KEEP_VM_HOURS,
    KeepVm,
    expire_vm,
    first_line,
    note_vm,
    release_vm,
)

# Results kept in state for ``get_result`` (the run itself keeps every result).
KEEP_RESULTS = 20
MAX_SUMMARY = 4000
MAX_TEST_OUTPUT = 8000
# Seconds the tests may run (killed after, then the step fails).
TESTS_TIMEOUT = 900


class FixBugRequest(RepoRequest, KeepVm):
    repo: str = Field(
        description="git URL (the vm gets a network), an uploaded bundle "
        "('blob:sha256:<hex>'), or a host path inside AGENTVM_REPO_ROOTS"
    )
    issue: str = Field(min_length=1, description="what to fix")
    test_command: str = Field("make test", description="run in the repository; 0 = fixed")
    agent_type: str = DEFAULT_AGENT
    model: str | None = None
    vm_key: str | None = None
    max_attempts: int = Field(
        3, ge=1, le=10, description="agent turns, each followed by the tests, until they pass"
    )
    deliver: Literal["patch", "branch"] = Field(
        "patch",
        description="'patch': the fix is downloadable as a patch; 'branch': also written "
        "into the source repository (a local git repository) as branch agentvm/fix-<run id>",
    )

    @field_validator("deliver")
    @classmethod
    def _branch_needs_local_git(cls, value: str, info: ValidationInfo) -> str:
        repo = info.data.get("repo")
        if value == "branch" and isinstance(repo, str):
            if is_remote(repo) or is_blob(repo):
                raise ValueError(
                    "'branch' needs a repository on the server (a path inside "
                    "AGENTVM_REPO_ROOTS); an uploaded or remote repository gets its fix "
                    "as a patch: GET .../runs/{run_id}/patch"
                )
            if not os.path.exists(os.path.join(repo, ".git")):
                raise ValueError(f"'branch' needs a git repository; {repo!r} is not one")
        return value


FIX_PROMPT = (
    "You are working in the git repository at {repo_dir}. Fix the bug described in "
    "this issue:\n\n{issue}\n\nThe tests are run with `{test_command}`. Make the "
    "smallest change that fixes the bug."
)
AGAIN_PROMPT = (
    "The tests still fail (`{test_command}` exited {exit_code}). Their output:\n\n"
    "{output}\n\nFix the code so that the tests pass."
)
RESUME_PROMPT = (
    "\n\nAn earlier attempt changed the repository but the tests still failed "
    "(exit {exit_code}). Their last output:\n\n{output}"
)


def _fix_bug(policy: RepoPolicy, keep_hours: float) -> Any:
    model = FixBugRequest.with_policy(policy)

    async def handle(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
        req = parse(model, message.body)  # validated at send time already
        key = req.vm_key or f"fix-{message.id}"
        vm = ctx.client().vm.get_or_create(key, input=vm_input_for(req.repo))
        await note_vm(ctx, key)
        session = AgentSession(
            vm,
            agent_type=req.agent_type,
            model=req.model,
            stopping=lambda: ctx.engine_stopping,
        )
        completed = False
        try:
            result = await _fix(ctx, message.id, req, key, vm, session, policy)
            completed = True
            return result
        finally:
            await AgentSession._shielded(session.close())
            await release_vm(ctx, key, keep=req.keep_vm, keep_hours=keep_hours, completed=completed)

    return handle


async def _fix(
    ctx: WorkflowContext,
    run_id: int,
    req: FixBugRequest,
    key: str,
    vm: Any,
    session: AgentSession,
    policy: RepoPolicy,
) -> dict[str, Any]:
    clone = await ctx.step("clone-repo", lambda: prepare_repo(vm, req.repo, policy), max_retries=2)
    base = str(clone["base"])
    first = FIX_PROMPT.format(repo_dir=REPO_DIR, issue=req.issue, test_command=req.test_command)
    agent: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    attempts = 0
    for attempt in range(1, req.max_attempts + 1):
        last = tests

        async def fix(attempt: int = attempt, last: dict[str, Any] = last) -> dict[str, Any]:
            if attempt == 1 and not session.open:
                prompt = first
            elif session.open:
                prompt = AGAIN_PROMPT.format(
                    test_command=req.test_command, exit_code=last["exit_code"],
                    output=last["output"],
                )  # fmt: skip
            else:  # a new session (replayed, or the last one failed): give it the context
                prompt = first + RESUME_PROMPT.format(
                    exit_code=last["exit_code"], output=last["output"]
                )
            if not session.open:
                await ensure_repo(vm, req.repo, policy, base)
            reply = await session.prompt(prompt)
            return {
                "session_id": reply.get("session_id"),
                "stop_reason": reply.get("stop_reason"),
                "text": str(reply.get("text") or "")[-MAX_SUMMARY:],
            }

        async def run_tests() -> dict[str, Any]:
            # The exec "timeout" runs the tests in their own cgroup: a timeout kills
            # every process they started (setsid ones too), and the call ends by then.
            command = ["sh", "-c", req.test_command]
            result = await vm.exec(command, {"cwd": REPO_DIR, "timeout": TESTS_TIMEOUT})
            output = result["stdout"] + result["stderr"]
            if result.get("timed_out"):
                output += f"\n[tests killed after {TESTS_TIMEOUT}s]\n"
            return {
                "exit_code": result["exit_code"],
                "output": output[-MAX_TEST_OUTPUT:],
                "diff": await diff_since(vm, base),
            }

        suffix = "" if attempt == 1 else f"-{attempt}"
        agent = await ctx.step(f"fix-bug{suffix}", fix, max_retries=1, timeout=3600)
        tests = await ctx.step(
            f"run-tests{suffix}", run_tests, max_retries=1, timeout=TESTS_TIMEOUT + 60
        )
        attempts = attempt
        if tests["exit_code"] == 0:
            break
    await AgentSession._shielded(session.close())
    fixed = tests["exit_code"] == 0

    patch = await ctx.step(
        "make-patch",
        lambda: commit_fix(vm, base, f"Fix: {first_line(req.issue)}"),
        max_retries=1,
    )
    branch = None
    if req.deliver == "branch" and fixed and patch.get("commit"):
        delivered = await ctx.step(
            "deliver-branch",
            lambda: deliver_branch(vm, req.repo, policy, base, f"agentvm/fix-{run_id}"),
            max_retries=1,
        )
        branch = delivered["branch"]

    async def usage() -> Any:
        return (await vm.llm_usage()).get("total")

    result = {
        "issue": req.issue,
        "vm": key,
        "fixed": fixed,
        "attempts": attempts,
        "tests_exit_code": tests["exit_code"],
        "test_output": tests["output"],
        "diff": tests["diff"],
        "patch": patch.get("patch"),
        "commit": patch.get("commit"),
        "branch": branch,
        "summary": agent.get("text", ""),
        "agent_stop_reason": agent.get("stop_reason"),
        "usage": await ctx.step("usage", usage, max_retries=1),
    }

    def record() -> None:
        kept = {k: v for k, v in result.items() if k != "patch"}
        results = ctx.state["results"]
        results[str(run_id)] = kept
        for old in sorted(results, key=int)[:-KEEP_RESULTS]:
            del results[old]
        ctx.broadcast("fixBugCompleted", kept)

    await ctx.step("record-result", record)
    return result


def automator(
    policy: RepoPolicy | None = None, *, keep_vm_hours: float = DEFAULT_KEEP_VM_HOURS
) -> ActorDefinition:
    """``policy``: where local repositories may come from (default: nowhere);
    ``keep_vm_hours``: how long a vm kept with ``keep_vm`` lives."""
    policy = policy or RepoPolicy()
    model = FixBugRequest.with_policy(policy)
    return actor(
        state={"results": {}},
        queues={
            "fixBug": queue(
                "fix a bug: {repo, issue, test_command, max_attempts?, deliver?, keep_vm?}",
                body=model,
                run=_fix_bug(policy, keep_vm_hours),
                concurrency=BUILTIN_CONCURRENCY,
            )
        },
        events={"fixBugCompleted": event("the result of one fixBug run (without the patch)")},
        actions={
            "get_results": lambda c: c.state["results"],
            "get_result": lambda c, message_id: c.state["results"].get(str(message_id)),
            "expire_vm": expire_vm,
        },
    )
