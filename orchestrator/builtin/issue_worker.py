"""``issueWorker``: ingest issues from webhooks through an action into a queue.

``ingest_issue(title, body)`` (callable over HTTP:
``POST /actors/issueWorker/main/actions/ingest_issue``) queues the issue; the
queue's runs investigate and fix each in the vm ``issue-worker`` (up to 4 at once).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..contexts import ActorContext
from ..definitions import ActorDefinition, actor, event, queue
from ..errors import InvalidRequest
from ..workflow import WorkflowContext
from ._agent import DEFAULT_AGENT, run_agent_task
from ._input import parse
from ._runs import BUILTIN_CONCURRENCY, note_vm

# Handled issues kept in state (each run keeps its own result).
KEEP_HANDLED = 100


class Issue(BaseModel):
    title: str = Field(min_length=1)
    body: str = ""


async def ingest_issue(c: ActorContext, title: Any, body: Any = "") -> int:
    if not isinstance(title, str) or not title:
        raise InvalidRequest("title must be a non-empty string", field="title")
    if not isinstance(body, str):
        raise InvalidRequest("body must be a string", field="body")
    return await c.queue.send("issues", {"title": title, "body": body})


async def _issue(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
    issue = parse(Issue, message.body)
    key = ctx.state["vm_key"]
    vm = ctx.client().vm.get_or_create(key)
    await note_vm(ctx, key)

    async def work() -> Any:
        prompt = f"Investigate and fix this issue:\n\nTitle: {issue.title}\n\n{issue.body}"
        return await run_agent_task(
            vm,
            prompt,
            agent_type=ctx.state["agent_type"],
            cwd="/home/user",
            stopping=lambda: ctx.engine_stopping,
        )

    outcome = await ctx.step("work-issue", work, max_retries=1, timeout=3600)
    entry = {"title": issue.title, "stop_reason": outcome.get("stop_reason")}

    def record() -> None:
        handled = ctx.state["handled"]
        handled.append(entry)
        del handled[:-KEEP_HANDLED]
        ctx.broadcast("issueHandled", entry)

    await ctx.step("record-issue", record)
    return entry


def issue_worker() -> ActorDefinition:
    return actor(
        create_state=lambda input: {
            "vm_key": (input or {}).get("vm_key", "issue-worker"),
            "agent_type": (input or {}).get("agent_type", DEFAULT_AGENT),
            "handled": [],
        },
        queues={
            "issues": queue(
                "an issue: {title, body}",
                body=Issue,
                run=_issue,
                concurrency=BUILTIN_CONCURRENCY,
            )
        },
        events={"issueHandled": event()},
        actions={"ingest_issue": ingest_issue, "get_handled": lambda c: c.state["handled"]},
    )
