"""``reviewer``: completable request/response — the caller waits for the review.

``send("review", {"file": path}, wait=True, timeout=...)`` returns
``{"summary": ...}``: an agent reads the file in the vm ``reviewer`` and writes
a summary to ``/home/user/review.txt``, which becomes the response.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..definitions import ActorDefinition, actor, queue
from ..workflow import Loop, WorkflowContext, workflow
from ._agent import DEFAULT_AGENT, read_capped, run_agent_task
from ._input import parse

SUMMARY_PATH = "/home/user/review.txt"
# The most of the reviewed file put into the prompt (and the stored step input).
MAX_CODE = 200 * 1024


class ReviewRequest(BaseModel):
    file: str = Field(min_length=1, description="path of the file in the vm")
    agent_type: str = DEFAULT_AGENT


async def _run(ctx: WorkflowContext) -> None:
    async def one_review(loop_ctx: WorkflowContext) -> Any:
        message = await loop_ctx.queue.next("wait-review", names=["review"], completable=True)
        assert message is not None
        req = parse(ReviewRequest, message.body)
        vm = loop_ctx.client().vm.get_or_create(loop_ctx.state["vm_key"])

        async def review() -> str:
            code = await read_capped(vm, req.file, MAX_CODE)
            await run_agent_task(
                vm,
                f"Review this code and write a summary to {SUMMARY_PATH}:\n\n{code}",
                agent_type=req.agent_type,
                cwd="/home/user",
            )
            return await read_capped(vm, SUMMARY_PATH)

        summary = await loop_ctx.step("review", review, max_retries=1, timeout=3600)

        def record() -> None:
            loop_ctx.state["reviewed"] += 1

        await loop_ctx.step("count", record)
        await message.complete({"summary": summary})
        return Loop.continue_()

    await ctx.loop("review-loop", one_review)


def reviewer() -> ActorDefinition:
    return actor(
        create_state=lambda input: {
            "vm_key": (input or {}).get("vm_key", "reviewer"),
            "reviewed": 0,
        },
        queues={"review": queue("review a file: {file} → {summary}", body=ReviewRequest)},
        run=workflow(_run),
    )
