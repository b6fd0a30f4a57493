"""A user orchestrator that runs ``ctx.parallel`` / ``ctx.race`` of agent tasks, served
next to the real vm actor (tests/dag/test_agent_tasks.py).

As a program (``python -m tests.dag.agent_tasks_app DB HOST_ID BODY_JSON RUN_FILE``)
it starts the real host runtime on ``DB``, sends ``BODY_JSON`` to the ``jobs`` queue,
writes the run id to ``RUN_FILE`` and serves until it is killed (the ``kill -9``
test)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, Literal

from pydantic import BaseModel

from host.app import HostSettings, build_registry, host_runtime
from orchestrator import (
    ActorDefinition,
    EngineConfig,
    Message,
    Registry,
    WorkflowContext,
    actor,
    queue,
)
from orchestrator.dag.agent import AgentTask

GATE_DEADLINE_S = 300.0


class Job(BaseModel):
    kind: Literal["parallel", "race"]
    tasks: list[AgentTask]
    max_concurrency: int | None = None
    fail_fast: bool = False
    announce: str | None = None  # a file the group's result is written to
    gate: str | None = None  # a file the run waits for after the group


async def _wait_for_file(path: str) -> bool:
    deadline = time.monotonic() + GATE_DEADLINE_S
    while not os.path.exists(path):  # noqa: ASYNC240 (one stat per poll, test actor)
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        await asyncio.sleep(0.05)
    return True


def _write(path: str, value: Any) -> bool:
    with open(path, "w") as f:
        json.dump(value, f)
    return True


async def handle(ctx: WorkflowContext, msg: Message) -> Any:
    job = Job.model_validate(msg.body)
    out: Any
    if job.kind == "parallel":
        out = await ctx.parallel(
            job.tasks, max_concurrency=job.max_concurrency, fail_fast=job.fail_fast
        )
    else:
        won = await ctx.race(job.tasks)
        out = {"winner": won.winner, "value": won.value}
    if job.announce:
        path = job.announce
        await ctx.step("announce", lambda: _write(path, out))
    if job.gate:
        gate = job.gate
        await ctx.step("gate", lambda: _wait_for_file(gate))
    return out


def agent_tasks() -> ActorDefinition:
    return actor(queues={"jobs": queue("agent task groups", body=Job, run=handle)})


def runtime(db: str, host_id: str) -> Any:
    def registry(manager: Any) -> Registry:
        return Registry({**build_registry(manager).actors, "tasks": agent_tasks()})

    return host_runtime(
        EngineConfig(db=db), HostSettings(host_id=host_id, warm_pool=0), registry=registry
    )


async def _main(db: str, host_id: str, body: str, run_file: str) -> None:
    async with runtime(db, host_id) as engine:
        sent = await engine.client().tasks.get_or_create("main").send("jobs", json.loads(body))
        _write(run_file, sent.message_id)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:5]))
