"""Run-queue actors served to tests/test_cli_runs.py (``--registry tests.cli_runs_registry:build``).

- ``jobs``: a serial run queue whose steps wait for files the test creates
  (``gate``: blocks until the file exists; ``need``: fails at once without it)
  and log each execution of ``double`` to a file (retry must not repeat it).
- ``patcher``: a run whose result carries the ``patch`` given in the body (the
  patch route serves any run's ``result.patch``).
- ``fixer`` + ``vm``: a run that names its vm (``run_meta(vm=...)``) and makes the
  vm broadcast ``session_event``s shaped like the real ones (docs/sessions.md);
  ``vm`` here is a test double that stores and serves them like the real vm actor's
  ``list_sessions`` / ``get_session_events``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from orchestrator import (
    ActorContext,
    InvalidRequest,
    Message,
    Registry,
    WorkflowContext,
    actor,
    queue,
)

GATE_DEADLINE_S = 120.0


async def _wait_for_file(path: str) -> bool:
    """Poll for a file the test creates (a gate); bounded so a broken test ends."""
    deadline = time.monotonic() + GATE_DEADLINE_S
    while not os.path.exists(path):  # noqa: ASYNC240 (one stat per poll, test actor)
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        await asyncio.sleep(0.05)
    return True


def _double(body: dict[str, Any]) -> int:
    if body.get("log"):
        with open(body["log"], "a") as f:
            f.write("double\n")
    return int(body["n"]) * 2


def _need(path: str) -> bool:
    if not os.path.exists(path):
        raise InvalidRequest(f"missing {path}", field="need")
    return True


async def job(ctx: WorkflowContext, msg: Message) -> Any:
    body = msg.body or {}
    doubled = await ctx.step("double", lambda: _double(body))
    if body.get("gate"):
        await ctx.step("gate", lambda: _wait_for_file(body["gate"]), max_retries=0)
    if body.get("need"):
        await ctx.step("check", lambda: _need(body["need"]), max_retries=0)
    return {"doubled": doubled}


jobs = actor(state={}, queues={"tasks": queue(run=job, concurrency=1)})


async def make_patch(ctx: WorkflowContext, msg: Message) -> Any:
    body = msg.body or {}
    result = await ctx.step("fix", lambda: {"fixed": bool(body.get("patch"))})
    if body.get("patch"):
        result["patch"] = body["patch"]
    return result


patcher = actor(state={}, queues={"fixes": queue(run=make_patch)})


async def fix(ctx: WorkflowContext, msg: Message) -> Any:
    body = msg.body
    await ctx.run_meta(vm=body["vm"])
    vm = ctx.client().vm.get_or_create(body["vm"])
    await ctx.step("early", lambda: vm.call("emit", body["early"]))
    await ctx.step("gate", lambda: _wait_for_file(body["gate"]), max_retries=0)
    await ctx.step("late", lambda: vm.call("emit", body["late"]))
    if body.get("fail"):
        raise InvalidRequest(body["fail"], field="fail")
    return {"fixed": True, "attempts": 1, "patch": "From x\n" * 50}


fixer = actor(state={}, queues={"fix": queue(run=fix)})


def emit(c: ActorContext, events: list[dict[str, Any]]) -> int:
    """Store and broadcast session events, numbered per session like the real store."""
    log: dict[str, list[dict[str, Any]]] = c.state.setdefault("events", {})
    for ev in events:
        stored = log.setdefault(ev["session_id"], [])
        full = {"offset": 0, "at": time.time(), **ev, "seq": len(stored) + 1}
        stored.append(full)
        c.broadcast("session_event", full)
    return len(events)


def list_sessions(c: ActorContext) -> list[dict[str, Any]]:
    return [{"session_id": sid, "status": "idle"} for sid in c.state.get("events", {})]


def get_session_events(
    c: ActorContext, session_id: str, opts: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    since = int((opts or {}).get("since", 0))
    events: list[dict[str, Any]] = c.state.get("events", {}).get(session_id, [])
    return [e for e in events if e["seq"] > since]


vm = actor(
    state={"events": {}},
    actions={
        "emit": emit,
        "list_sessions": list_sessions,
        "get_session_events": get_session_events,
    },
)


def build() -> Registry:
    return Registry({"jobs": jobs, "patcher": patcher, "fixer": fixer, "vm": vm})
