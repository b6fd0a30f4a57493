"""``issueWorker``: ingest issues from webhooks through an action into a queue.

``ingest_issue(title, body)`` (callable over HTTP:
``POST /actors/issueWorker/main/actions/ingest_issue``) queues the issue; the
workflow investigates and fixes each in the vm ``issue-worker``, one at a time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..contexts import ActorContext
from ..definitions import ActorDefinition, actor, event, queue
from ..errors import InvalidRequest
from ..workflow import Loop, WorkflowContext, workflow
from ._agent import DEFAULT_AGENT, run_agent_task
from ._input import parse


class Issue(BaseModel):
    title: str = Field(min_length=1)
    body: str = ""


async def ingest_issue(c: ActorContext, title: Any, body: Any = "") -> int:
    if not isinstance(title, str) or not title:
        raise InvalidRequest("title must be a non-empty string", field="title")
    if not isinstance(body, str):
        raise InvalidRequest("body must be a string", field="body")
    return await c.queue.send("issues", {"title": title, "body": body})


async def _run(ctx: WorkflowContext) -> None:
    async def one_issue(loop_ctx: WorkflowContext) -> Any:
        message = await loop_ctx.queue.next("wait-issue", names=["issues"])
        assert message is not None
        issue = parse(Issue, message.body)
        vm = loop_ctx.client().vm.get_or_create(loop_ctx.state["vm_key"])

        async def work() -> Any:
            prompt = f"Investigate and fix this issue:\n\nTitle: {issue.title}\n\n{issue.body}"
            return await run_agent_task(
                vm, prompt, agent_type=loop_ctx.state["agent_type"], cwd="/home/user"
            )

        outcome = await loop_ctx.step("work-issue", work, max_retries=1, timeout=3600)

        def record() -> None:
            entry = {"title": issue.title, "stop_reason": outcome.get("stop_reason")}
            loop_ctx.state["handled"].append(entry)
            loop_ctx.broadcast("issueHandled", entry)

        await loop_ctx.step("record-issue", record)
        return Loop.continue_()

    await ctx.loop("issue-loop", one_issue)


def issue_worker() -> ActorDefinition:
    return actor(
        create_state=lambda input: {
            "vm_key": (input or {}).get("vm_key", "issue-worker"),
            "agent_type": (input or {}).get("agent_type", DEFAULT_AGENT),
            "handled": [],
        },
        queues={"issues": queue("an issue: {title, body}", body=Issue)},
        events={"issueHandled": event()},
        actions={"ingest_issue": ingest_issue, "get_handled": lambda c: c.state["handled"]},
        run=workflow(_run),
    )
