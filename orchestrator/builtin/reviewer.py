"""``reviewer``: completable request/response — the caller waits for the review.

``send("review", {"file": path}, wait=True, timeout=...)`` returns
``{"summary": ...}``: an agent reads the file in the vm ``reviewer`` and writes a
summary to ``/home/user/review-<run id>.txt`` (its own file: runs of one key go
side by side, up to 4); the file is the summary if the agent wrote it, else the
agent's final message. Each message is a run; the vm is shared by the key's runs
and is not destroyed after one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..definitions import ActorDefinition, actor, queue
from ..workflow import WorkflowContext
from ._agent import DEFAULT_AGENT, read_capped, run_agent_task
from ._input import parse
from ._runs import BUILTIN_CONCURRENCY, note_vm

# The most of the reviewed file put into the prompt (and the stored step input).
MAX_CODE = 200 * 1024


class ReviewRequest(BaseModel):
    file: str = Field(min_length=1, description="path of the file in the vm")
    agent_type: str = DEFAULT_AGENT


async def _review(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
    req = parse(ReviewRequest, message.body)
    key = ctx.state["vm_key"]
    vm = ctx.client().vm.get_or_create(key)
    await note_vm(ctx, key)
    summary_path = f"/home/user/review-{message.id}.txt"

    async def review() -> str:
        code = await read_capped(vm, req.file, MAX_CODE)
        await vm.exec(["rm", "-f", summary_path])
        reply = await run_agent_task(
            vm,
            f"Review this code and write a summary to {summary_path}:\n\n{code}",
            agent_type=req.agent_type,
            cwd="/home/user",
            stopping=lambda: ctx.engine_stopping,
        )
        if await vm.exists(summary_path):
            text = await read_capped(vm, summary_path)
            await vm.exec(["rm", "-f", summary_path])
            return text
        return str(reply.get("text") or "")[-MAX_CODE:]

    summary = await ctx.step("review", review, max_retries=1, timeout=3600)

    def record() -> None:
        ctx.state["reviewed"] += 1

    await ctx.step("count", record)
    return {"summary": summary}


def reviewer() -> ActorDefinition:
    return actor(
        create_state=lambda input: {
            "vm_key": (input or {}).get("vm_key", "reviewer"),
            "reviewed": 0,
        },
        queues={
            "review": queue(
                "review a file: {file} → {summary}",
                body=ReviewRequest,
                run=_review,
                concurrency=BUILTIN_CONCURRENCY,
            )
        },
    )
