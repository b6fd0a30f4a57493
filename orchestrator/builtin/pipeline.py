"""``pipeline``: the ``codeReview`` run — agent chaining.

One session reviews a file; its review is ``/home/user/review.md`` if the agent
wrote it, else the agent's final message (a model that answers in text instead of
writing the file still gives a review). The prompt asks for a JSON block of
findings, returned as ``findings: [{file, line, severity, text}]`` when the model
gave one (parsed leniently; None otherwise, the review stays plain ``review``
text). A second session applies the review. Send ``{"file_path": ..., "repo":
...}`` to ``codeReview`` (``repo`` optional: without it the file must already be
in the vm named by ``vm_key``, and that vm is kept with ``"keep_vm": true``). Each
message is a run (up to 4 at once per key); the run's vm is destroyed when the run
ends unless ``keep_vm``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..definitions import ActorDefinition, actor, event, queue
from ..workflow import WorkflowContext
from ._agent import DEFAULT_AGENT, REPO_DIR, read_capped, run_agent_task, vm_input_for
from ._findings import parse_findings
from ._git import ensure_repo, prepare_repo
from ._input import parse
from ._repo import RepoPolicy, RepoRequest
from ._runs import (
    BUILTIN_CONCURRENCY,
    DEFAULT_KEEP_VM_HOURS,
    KeepVm,
    expire_vm,
    note_vm,
    release_vm,
)

REVIEW_PATH = "/home/user/review.md"
KEEP_REVIEWS = 20
MAX_TEXT = 4000

REVIEW_PROMPT = (
    "Review the code at {file_path} and write your findings to {review_path}. End "
    "your answer with the findings as a JSON block:\n\n```json\n"
    '{{"findings": [{{"file": "path", "line": 1, "severity": "error|warning|info", '
    '"text": "what is wrong and how to fix it"}}]}}\n```'
)


class CodeReviewRequest(RepoRequest, KeepVm):
    file_path: str = Field(min_length=1, description="the file to review, in the vm")
    repo: str | None = Field(
        None,
        description="optional repository to put in the vm first: a git URL, an uploaded "
        "bundle ('blob:sha256:<hex>') or a host path inside AGENTVM_REPO_ROOTS",
    )
    agent_type: str = DEFAULT_AGENT
    model: str | None = None
    vm_key: str | None = None


def _code_review(policy: RepoPolicy, keep_hours: float) -> Any:
    model = CodeReviewRequest.with_policy(policy)

    async def handle(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
        req = parse(model, message.body)
        key = req.vm_key or f"review-{message.id}"
        vm = ctx.client().vm.get_or_create(key, input=vm_input_for(req.repo))
        await note_vm(ctx, key)
        completed = False
        try:
            result = await _review(ctx, message.id, req, key, vm, policy)
            completed = True
            return result
        finally:
            await release_vm(ctx, key, keep=req.keep_vm, keep_hours=keep_hours, completed=completed)

    return handle


async def _review(
    ctx: WorkflowContext,
    run_id: int,
    req: CodeReviewRequest,
    key: str,
    vm: Any,
    policy: RepoPolicy,
) -> dict[str, Any]:
    repo = req.repo
    base = None
    if repo:
        clone = await ctx.step("clone-repo", lambda: prepare_repo(vm, repo, policy), max_retries=2)
        base = str(clone["base"])

    async def review() -> dict[str, Any]:
        if repo and base:
            await ensure_repo(vm, repo, policy, base)  # a retried run's new vm
        # An old review must not pass for this one's (a kept vm, a retry).
        await vm.exec(["rm", "-f", REVIEW_PATH])
        prompt = REVIEW_PROMPT.format(file_path=req.file_path, review_path=REVIEW_PATH)
        reply = await run_agent_task(
            vm,
            prompt,
            agent_type=req.agent_type,
            model=req.model,
            stopping=lambda: ctx.engine_stopping,
        )
        return {"stop_reason": reply.get("stop_reason"), "text": str(reply.get("text") or "")}

    async def read_review() -> dict[str, Any]:
        # The file if the agent wrote one, else its final message: never a failure.
        if await vm.exists(REVIEW_PATH):
            return {"source": "file", "text": await read_capped(vm, REVIEW_PATH)}
        return {"source": "message", "text": reviewed["text"]}

    reviewed = await ctx.step("review", review, max_retries=1, timeout=3600)
    got = await ctx.step("read-review", read_review, max_retries=2)
    review_text = str(got["text"])
    findings = parse_findings(review_text)
    if findings is None and got["source"] == "file":
        findings = parse_findings(str(reviewed["text"]))

    async def apply_fixes() -> Any:
        prompt = f"Apply the following review feedback:\n\n{review_text}"
        return await run_agent_task(
            vm,
            prompt,
            agent_type=req.agent_type,
            model=req.model,
            stopping=lambda: ctx.engine_stopping,
        )

    fixed = await ctx.step("fix", apply_fixes, max_retries=1, timeout=3600)
    result = {
        "file_path": req.file_path,
        "vm": key,
        "review": review_text,
        "review_source": got["source"],
        "findings": findings,
        "fix_stop_reason": fixed.get("stop_reason"),
        "fix_text": str(fixed.get("text") or "")[-MAX_TEXT:],
    }

    def record() -> None:
        reviews = ctx.state["reviews"]
        reviews[str(run_id)] = result
        for old in sorted(reviews, key=int)[:-KEEP_REVIEWS]:
            del reviews[old]
        ctx.broadcast("codeReviewCompleted", result)

    await ctx.step("record-result", record)
    return result


def pipeline(
    policy: RepoPolicy | None = None, *, keep_vm_hours: float = DEFAULT_KEEP_VM_HOURS
) -> ActorDefinition:
    """``policy``: where local repositories may come from (default: nowhere)."""
    policy = policy or RepoPolicy()
    model = CodeReviewRequest.with_policy(policy)
    return actor(
        state={"reviews": {}},
        queues={
            "codeReview": queue(
                "review then fix: {file_path, repo?, keep_vm?}",
                body=model,
                run=_code_review(policy, keep_vm_hours),
                concurrency=BUILTIN_CONCURRENCY,
            )
        },
        events={"codeReviewCompleted": event()},
        actions={"get_reviews": lambda c: c.state["reviews"], "expire_vm": expire_vm},
    )


__all__ = ["REPO_DIR", "pipeline"]
