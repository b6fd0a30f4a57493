"""``taskRunner``: a serial task queue — one agent task at a time, in order.

Send ``{"prompt": ...}`` to ``tasks``. Each task is a run of the queue with
``concurrency=1``: it runs in the shared vm ``task-agent`` (or ``vm_key`` from the
actor's create input) in its own step, and the next task starts only after it
ended; ``state["tasks"]`` records when each started and finished.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from ..definitions import ActorDefinition, actor, event, queue
from ..workflow import WorkflowContext
from ._agent import DEFAULT_AGENT, run_agent_task
from ._input import parse
from ._runs import note_vm

# Task records kept in state (each run keeps its own result).
KEEP_TASKS = 100


class Task(BaseModel):
    prompt: str = Field(min_length=1)
    agent_type: str = DEFAULT_AGENT
    cwd: str = "/home/user"


async def _task(ctx: WorkflowContext, message: Any) -> dict[str, Any]:
    task = parse(Task, message.body)
    key = ctx.state["vm_key"]
    vm = ctx.client().vm.get_or_create(key)
    await note_vm(ctx, key)

    async def run_task() -> Any:
        started = time.time()
        reply = await run_agent_task(
            vm,
            task.prompt,
            agent_type=task.agent_type,
            cwd=task.cwd,
            stopping=lambda: ctx.engine_stopping,
        )
        return {"started_at": started, "finished_at": time.time(), **reply}

    outcome: dict[str, Any] = await ctx.step("run-task", run_task, max_retries=1, timeout=3600)

    def record() -> None:
        entry = {"message_id": message.id, "prompt": task.prompt[:1000], **outcome}
        tasks = ctx.state["tasks"]
        tasks.append(entry)
        del tasks[:-KEEP_TASKS]
        ctx.broadcast("taskCompleted", entry)

    await ctx.step("record-task", record)
    return outcome


def task_runner() -> ActorDefinition:
    return actor(
        create_state=lambda input: {
            "vm_key": (input or {}).get("vm_key", "task-agent"),
            "tasks": [],
        },
        queues={"tasks": queue("one agent task: {prompt}", body=Task, run=_task, concurrency=1)},
        events={"taskCompleted": event()},
        actions={"get_tasks": lambda c: c.state["tasks"]},
    )
