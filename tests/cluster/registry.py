"""The registry the cluster tests' hosts serve (``--registry tests.cluster.registry:build``).

No Docker: counters (actions, a queue, broadcasts), a ``relay`` whose action calls a
counter through the in-process client (forwarded when another host owns it), and
two kinds of durable work whose every step leaves a line in ``$CLUSTER_EFFECTS``:

- ``flow``: an actor whose main workflow runs ``s0``, waits at a gate, then ``s1``, ``s2``;
- ``job``: an actor whose ``work`` queue makes each message a run doing the same.

The gate is a step without side effects that waits for ``$CLUSTER_GATE`` to exist
(writing ``<unit> waiting`` to ``$CLUSTER_MARKS`` once it starts, i.e. once ``s0`` is
committed): the tests kill or pause a host while every unit waits there, so a step
with a side effect is never in flight at that moment and each must happen exactly once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from orchestrator import ActorContext, Registry, WorkflowContext, actor, queue, workflow

STEPS = ("s1", "s2")


def _host() -> str:
    return os.environ.get("AGENTVM_HOST_ID", "?")


def _append(var: str, line: str) -> None:
    path = os.environ.get(var)
    if path:
        # One small O_APPEND write: lines from several processes never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


async def _gate(unit: str) -> bool:
    _append("CLUSTER_MARKS", f"{unit} waiting {_host()}")
    gate = os.environ.get("CLUSTER_GATE", "/nonexistent/gate")
    # The test (another process) creates the file: nothing to wait on but polling.
    while not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)
    return True


async def _steps(ctx: WorkflowContext, unit: str) -> int:
    def effect(step: str) -> Any:
        return lambda: _append("CLUSTER_EFFECTS", f"{unit} {step} {_host()}")

    await ctx.step("s0", effect("s0"))
    await ctx.step("gate", lambda: _gate(unit), timeout=3600)
    for step in STEPS:
        await ctx.step(step, effect(step))
    return 1 + len(STEPS)


# --- counter -----------------------------------------------------------------------------


def increment(c: ActorContext, amount: int = 1) -> int:
    c.state["count"] += amount
    c.broadcast("changed", {"count": c.state["count"], "host": _host()})
    return int(c.state["count"])


def get_count(c: ActorContext) -> int:
    return int(c.state["count"])


def where(c: ActorContext) -> str:
    return _host()


async def later(c: ActorContext, delay: float) -> int:
    """Schedule ``tick`` in ``delay`` seconds (durable: a schedule row)."""
    return await c.schedule.after(delay, "tick")


def tick(c: ActorContext) -> None:
    c.state["count"] += 1
    _append("CLUSTER_EFFECTS", f"counter/{c.key[0]} tick {_host()}")


counter = actor(
    state={"count": 0},
    queues={"jobs": queue()},
    actions={
        "increment": increment,
        "get_count": get_count,
        "where": where,
        "later": later,
        "tick": tick,
    },
)


# --- relay: actor code calling another actor in-process ----------------------------------


async def bump(c: ActorContext, key: str) -> dict[str, Any]:
    handle = c.client().counter.get([key])
    count = await handle.increment()
    return {"count": count, "counter_host": await handle.where(), "relay_host": _host()}


async def make(c: ActorContext, key: str) -> str:
    where_: str = await c.client().counter.get_or_create([key]).where()
    return where_


relay = actor(state={}, actions={"bump": bump, "make": make, "where": where})


# --- durable work --------------------------------------------------------------------------


async def _flow(ctx: WorkflowContext) -> None:
    await _steps(ctx, f"flow/{ctx.key[0]}")


async def _work(ctx: WorkflowContext, message: Any) -> int:
    return await _steps(ctx, f"job/{message.body['unit']}")


flow = actor(state={}, actions={"where": where}, run=workflow(_flow))
job = actor(state={}, actions={"where": where}, queues={"work": queue(run=_work, concurrency=8)})


def build() -> Registry:
    from tests.server.registry import vm  # the vm actor's test double (files in its state)

    return Registry({"counter": counter, "relay": relay, "flow": flow, "job": job, "vm": vm})
