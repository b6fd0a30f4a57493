"""``taskRunner``: a serial task queue — one agent task at a time, in order.

Send ``{"prompt": ...}`` to ``tasks``. Each task runs in the shared vm
``task-agent`` (or ``vm_key`` from the actor's create input) in its own step;
``state["tasks"]`` records when each started and finished.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from ..definitions import ActorDefinition, actor, event, queue
from ..workflow import Loop, WorkflowContext, workflow
from ._agent import DEFAULT_AGENT, run_agent_task
from ._input import parse


class Task(BaseModel):
    prompt: str = Field(min_length=1)
    agent_type: str = DEFAULT_AGENT
    cwd: str = "/home/user"


async def _run(ctx: WorkflowContext) -> None:
    async def one_task(loop_ctx: WorkflowContext) -> Any:
        message = await loop_ctx.queue.next("wait-task", names=["tasks"], completable=True)
        assert message is not None
        task = parse(Task, message.body)
        vm = loop_ctx.client().vm.get_or_create(loop_ctx.state["vm_key"])

        async def run_task() -> Any:
            started = time.time()
            reply = await run_agent_task(vm, task.prompt, agent_type=task.agent_type, cwd=task.cwd)
            return {"started_at": started, "finished_at": time.time(), **reply}

        outcome = await loop_ctx.step("run-task", run_task, max_retries=1, timeout=3600)

        def record() -> None:
            entry = {"message_id": message.id, "prompt": task.prompt, **outcome}
            loop_ctx.state["tasks"].append(entry)
            loop_ctx.broadcast("taskCompleted", entry)

        await loop_ctx.step("record-task", record)
        await message.complete(outcome)
        return Loop.continue_()

    await ctx.loop("task-loop", one_task)


def task_runner() -> ActorDefinition:
    return actor(
        create_state=lambda input: {
            "vm_key": (input or {}).get("vm_key", "task-agent"),
            "tasks": [],
        },
        queues={"tasks": queue("one agent task: {prompt}", body=Task)},
        events={"taskCompleted": event()},
        actions={"get_tasks": lambda c: c.state["tasks"]},
        run=workflow(_run),
    )
