"""``pipeline``: the ``codeReview`` workflow — agent chaining.

One session reviews a file and writes ``/home/user/review.md``; the next step
reads it; a second session applies it. Send ``{"file_path": ..., "repo": ...}``
to ``codeReview`` (``repo`` optional: without it the file must already be in
the vm, named by ``vm_key``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..definitions import ActorDefinition, actor, event, queue
from ..workflow import Loop, WorkflowContext, workflow
from ._agent import DEFAULT_AGENT, REPO_DIR, put_repo, read_capped, run_agent_task, vm_input_for
from ._input import parse
from ._repo import RepoPolicy, RepoRequest

REVIEW_PATH = "/home/user/review.md"


class CodeReviewRequest(RepoRequest):
    file_path: str = Field(min_length=1, description="the file to review, in the vm")
    repo: str | None = Field(
        None,
        description="optional repository to put in the vm first: a git URL, an uploaded "
        "bundle ('blob:sha256:<hex>') or a host path inside AGENTVM_REPO_ROOTS",
    )
    agent_type: str = DEFAULT_AGENT
    model: str | None = None
    vm_key: str | None = None


def _code_review(policy: RepoPolicy) -> Any:
    model = CodeReviewRequest.with_policy(policy)

    async def run(ctx: WorkflowContext) -> None:
        async def one_request(loop_ctx: WorkflowContext) -> Any:
            message = await loop_ctx.queue.next(
                "wait-codeReview", names=["codeReview"], completable=True
            )
            assert message is not None
            req = parse(model, message.body)
            key = req.vm_key or f"review-{message.id}"
            vm = loop_ctx.client().vm.get_or_create(key, input=vm_input_for(req.repo))
            if req.repo:
                await loop_ctx.step(
                    "clone-repo", lambda: put_repo(vm, req.repo or "", policy=policy), max_retries=2
                )

            async def review() -> Any:
                prompt = (
                    f"Review the code at {req.file_path} and write your findings to {REVIEW_PATH}."
                )
                return await run_agent_task(vm, prompt, agent_type=req.agent_type, model=req.model)

            async def read_review() -> str:
                return await read_capped(vm, REVIEW_PATH)

            async def apply_fixes() -> Any:
                prompt = f"Apply the following review feedback:\n\n{review_text}"
                return await run_agent_task(vm, prompt, agent_type=req.agent_type, model=req.model)

            await loop_ctx.step("review", review, max_retries=1, timeout=3600)
            review_text = await loop_ctx.step("read-review", read_review)
            fixed = await loop_ctx.step("fix", apply_fixes, max_retries=1, timeout=3600)
            result = {
                "file_path": req.file_path,
                "vm": key,
                "review": review_text,
                "fix_stop_reason": fixed.get("stop_reason"),
                "fix_text": fixed.get("text", "")[-4000:],
            }

            def record() -> None:
                loop_ctx.state["reviews"][str(message.id)] = result
                loop_ctx.broadcast("codeReviewCompleted", result)

            await loop_ctx.step("record-result", record)
            await message.complete(result)
            return Loop.continue_()

        await ctx.loop("codeReview-loop", one_request)

    return run


def pipeline(policy: RepoPolicy | None = None) -> ActorDefinition:
    """``policy``: where local repositories may come from (default: nowhere)."""
    policy = policy or RepoPolicy()
    model = CodeReviewRequest.with_policy(policy)
    return actor(
        state={"reviews": {}},
        queues={"codeReview": queue("review then fix: {file_path, repo?}", body=model)},
        events={"codeReviewCompleted": event()},
        actions={"get_reviews": lambda c: c.state["reviews"]},
        run=workflow(_code_review(policy)),
    )


__all__ = ["REPO_DIR", "pipeline"]
