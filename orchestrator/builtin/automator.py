"""``automator``: the ``fixBug`` workflow — clone, let an agent fix, run the tests.

Send ``{"repo": url-or-path, "issue": "...", "test_command": "..."}`` to the
``fixBug`` queue (``wait=True`` returns the result). Each request gets its own
vm (key ``fix-<message id>`` unless ``vm_key`` is given); the result — the test
exit code and the diff — is stored in ``state["results"]`` and broadcast as
``fixBugCompleted``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..definitions import ActorDefinition, actor, event, queue
from ..workflow import Loop, WorkflowContext, workflow
from ._agent import DEFAULT_AGENT, REPO_DIR, put_repo, run_agent_task, vm_input_for
from ._input import parse
from ._repo import RepoPolicy, RepoRequest


class FixBugRequest(RepoRequest):
    repo: str = Field(
        description="git URL (the vm gets a network), an uploaded bundle "
        "('blob:sha256:<hex>'), or a host path inside AGENTVM_REPO_ROOTS"
    )
    issue: str = Field(min_length=1, description="what to fix")
    test_command: str = Field("make test", description="run in the repository; 0 = fixed")
    agent_type: str = DEFAULT_AGENT
    model: str | None = None
    vm_key: str | None = None


FIX_PROMPT = (
    "You are working in the git repository at {repo_dir}. Fix the bug described in "
    "this issue:\n\n{issue}\n\nThe tests are run with `{test_command}`. Make the "
    "smallest change that fixes the bug."
)


def _fix_bug(policy: RepoPolicy) -> Any:
    model = FixBugRequest.with_policy(policy)

    async def run(ctx: WorkflowContext) -> None:
        async def one_request(loop_ctx: WorkflowContext) -> Any:
            message = await loop_ctx.queue.next("wait-fixBug", names=["fixBug"], completable=True)
            assert message is not None
            req = parse(model, message.body)  # validated at send time already
            key = req.vm_key or f"fix-{message.id}"
            vm = loop_ctx.client().vm.get_or_create(key, input=vm_input_for(req.repo))

            async def clone() -> Any:
                return await put_repo(vm, req.repo, policy=policy)

            async def fix() -> Any:
                prompt = FIX_PROMPT.format(
                    repo_dir=REPO_DIR, issue=req.issue, test_command=req.test_command
                )
                return await run_agent_task(vm, prompt, agent_type=req.agent_type, model=req.model)

            async def run_tests() -> Any:
                tests = await vm.exec(req.test_command, {"cwd": REPO_DIR, "timeout": 900})
                diff = await vm.exec(["git", "diff"], {"cwd": REPO_DIR})
                return {
                    "exit_code": tests["exit_code"],
                    "output": (tests["stdout"] + tests["stderr"])[-8000:],
                    "diff": diff["stdout"],
                }

            await loop_ctx.step("clone-repo", clone, max_retries=2)
            agent = await loop_ctx.step("fix-bug", fix, max_retries=1, timeout=3600)
            tests = await loop_ctx.step("run-tests", run_tests, max_retries=1)
            result = {
                "issue": req.issue,
                "vm": key,
                "tests_exit_code": tests["exit_code"],
                "diff": tests["diff"],
                "test_output": tests["output"],
                "agent_stop_reason": agent.get("stop_reason"),
                "agent_text": agent.get("text", "")[-4000:],
            }

            def record() -> None:
                loop_ctx.state["results"][str(message.id)] = result
                loop_ctx.broadcast("fixBugCompleted", result)

            await loop_ctx.step("record-result", record)
            await message.complete(result)
            return Loop.continue_()

        await ctx.loop("fixBug-loop", one_request)

    return run


def automator(policy: RepoPolicy | None = None) -> ActorDefinition:
    """``policy``: where local repositories may come from (default: nowhere)."""
    policy = policy or RepoPolicy()
    model = FixBugRequest.with_policy(policy)
    return actor(
        state={"results": {}},
        queues={"fixBug": queue("fix a bug: {repo, issue, test_command}", body=model)},
        events={"fixBugCompleted": event("the result of one fixBug run")},
        actions={
            "get_results": lambda c: c.state["results"],
            "get_result": lambda c, message_id: c.state["results"].get(str(message_id)),
        },
        run=workflow(_fix_bug(policy)),
    )
