"""One agent task in a vm (:func:`run_agent`), and ``ctx.parallel`` / ``ctx.race`` of
agent tasks in a workflow (``docs/workflows.md``, "Agent tasks in your own
orchestrator").

:func:`run_agent` is not durable: a session does not survive a replay, so callers
run it inside a step (the DAG executor's ``step-<id>``, or the step each task of
``ctx.parallel``/``ctx.race`` gets). Everything it keeps of what the agent produced
is bounded: the agent in the sandbox is untrusted and may answer with anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import AgentVMError

if TYPE_CHECKING:
    from ..client import ActorHandle, Client

log = logging.getLogger("agentvm.dag.agent")

DEFAULT_AGENT = "coding-agent"
# What a step result keeps of a turn (it is stored in history and sent to callers).
MAX_TEXT = 256 * 1024
MAX_TOOL_CALLS = 200
MAX_TOOL_INPUT = 4 * 1024
MAX_CHECK_OUTPUT = 4 * 1024
# Reading the turn's events: pages of this many, at most this many pages (an agent
# can stream far more events than tool calls; the host holds one page at a time).
EVENTS_PAGE = 1000
MAX_EVENT_PAGES = 50
# A check command's deadline when the task has no timeout of its own.
CHECK_TIMEOUT = 600.0
# Seconds the clean-up of a session (cancel its prompt, close it) or of a vm may take.
CLEANUP_TIMEOUT = 30.0
VM_CLEANUP_TIMEOUT = 120.0
# Stop reasons of a turn that ended normally (the rest: refusal, cancelled, errors).
OK_STOP_REASONS = frozenset({"end_turn", "max_tokens", "max_turn_requests"})


class AgentTaskFailed(AgentVMError):
    """An agent task's turn did not end well (error, refusal, cancel, timeout) or its
    ``check`` failed. Metadata: ``stop_reason``, ``check_exit_code``, ``check_output``."""

    group = "workflow"
    code = "step_failed"
    http_status = 500


class AgentTask(BaseModel):
    """One prompt to one agent in one vm (``run_agent``, ``ctx.parallel``, ``ctx.race``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="the prompt sent to the agent")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="branch name (default task-<i>); names the task's step and vm",
    )
    agent_type: str | None = Field(None, description=f"agent to run (default {DEFAULT_AGENT})")
    model: str | None = None
    system_prompt: str | None = None
    allowed_tools: list[str] | None = None
    mode: Literal["agent", "single_shot"] = "agent"
    timeout: float | None = Field(None, gt=0, description="seconds for the whole task")
    retries: int = Field(0, ge=0, le=10)
    check: str | None = Field(
        None, description="shell command run in the vm after the turn; must exit 0"
    )
    vm: str | None = Field(None, description="an existing vm key; None: a fresh vm")
    fork_from: str | None = Field(
        None,
        pattern=r"^[^@]+@[^@]+$",
        description='"<vm key>@<checkpoint>": the fresh vm starts as a fork of it',
    )
    cwd: str = "/home/user"
    keep_vm: bool = False


# --- one task ------------------------------------------------------------------------


def _cap_input(value: Any) -> Any:
    """A tool call's input, or a cut JSON text of it when longer than MAX_TOOL_INPUT."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= MAX_TOOL_INPUT:
        return value
    return text[:MAX_TOOL_INPUT] + f"… [{len(text) - MAX_TOOL_INPUT} more]"


async def _tool_calls(vm: ActorHandle, sid: str) -> tuple[list[dict[str, Any]], bool]:
    """The session's tool calls (its only turn), from its stored events: at most
    MAX_TOOL_CALLS; the flag says some were left out."""
    calls: dict[str, dict[str, Any]] = {}
    truncated = False
    since = 0
    for _ in range(MAX_EVENT_PAGES):
        page = await vm.get_session_events(sid, {"since": since, "limit": EVENTS_PAGE})
        if not page:
            break
        since = int(page[-1]["seq"])
        for event in page:
            data = event.get("data") if event.get("kind") == "update" else None
            if not isinstance(data, dict):
                continue
            kind, call_id = data.get("sessionUpdate"), str(data.get("toolCallId"))
            if kind == "tool_call" and call_id not in calls:
                if len(calls) >= MAX_TOOL_CALLS:
                    truncated = True
                    continue
                calls[call_id] = {
                    "id": call_id,
                    "name": str(data.get("title") or data.get("kind") or "tool")[:200],
                    "input": _cap_input(data.get("rawInput")),
                    "status": str(data.get("status") or "pending")[:32],
                }
            elif kind == "tool_call_update" and call_id in calls:
                if isinstance(data.get("status"), str):
                    calls[call_id]["status"] = data["status"][:32]
                if data.get("rawInput") is not None:
                    calls[call_id]["input"] = _cap_input(data["rawInput"])
        if len(page) < EVENTS_PAGE:
            break
    else:
        truncated = True
    return list(calls.values()), truncated


async def _shielded(coro: Any, timeout: float = CLEANUP_TIMEOUT) -> None:
    """Run clean-up to its end even while the caller is being cancelled, within a
    deadline (a dead vm must not hold a cancellation up); never raises but a cancel."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.CancelledError:
        raise  # cancelled again meanwhile: the clean-up goes on by itself
    except Exception as exc:  # the vm's idle checks and the reaper are the backstop
        log.info("clean-up did not finish: %r", exc)


async def run_agent(
    client: Client,
    vm_key: str,
    task: AgentTask,
    *,
    stopping: Callable[[], bool],
) -> dict[str, Any]:
    """Run ``task`` in the existing vm ``vm_key``: a session with the task's options,
    one prompt, the turn's tool calls, then ``task.check``; the session is closed in
    every case (a cancelled caller cancels the agent's turn first — not while the
    host stops: ``stopping()``, e.g. ``lambda: ctx.engine_stopping``). Returns a step
    result; raises :class:`AgentTaskFailed` when the turn or the check failed."""
    vm = client.vm.get(vm_key)
    started = time.time()
    options: dict[str, Any] = {"cwd": task.cwd, "mode": task.mode}
    for field in ("model", "system_prompt", "allowed_tools"):
        if getattr(task, field) is not None:
            options[field] = getattr(task, field)
    info = await vm.create_session(task.agent_type or DEFAULT_AGENT, options)
    sid = str(info["session_id"])
    closed = False

    async def close() -> None:
        nonlocal closed
        if not closed and not stopping():
            closed = True
            with contextlib.suppress(Exception):
                await vm.close_session(sid)

    async def cancel_and_close() -> None:
        with contextlib.suppress(Exception):
            await vm.cancel_prompt(sid)
        await close()

    def failed(message: str, **meta: Any) -> AgentTaskFailed:
        return AgentTaskFailed(message, vm=vm_key, session_id=sid, **meta)

    try:
        try:
            async with asyncio.timeout(task.timeout):
                reply = await vm.send_prompt(sid, task.prompt)
        except TimeoutError:
            await _shielded(cancel_and_close())
            raise failed(
                f"the agent's turn took longer than {task.timeout} s",
                stop_reason="timeout",
                check_exit_code=None,
                check_output=None,
            ) from None
        except asyncio.CancelledError:
            if not stopping():
                await _shielded(cancel_and_close())
            raise
        except AgentVMError as exc:
            raise failed(
                f"the agent's turn failed: {exc.message}",
                stop_reason="error",
                check_exit_code=None,
                check_output=None,
                cause=exc.to_dict(),
            ) from exc
        stop_reason = str(reply.get("stop_reason"))
        if stop_reason not in OK_STOP_REASONS:
            raise failed(
                f"the agent's turn ended with {stop_reason!r}",
                stop_reason=stop_reason,
                check_exit_code=None,
                check_output=None,
            )
        calls, calls_cut = await _tool_calls(vm, sid)
        check = await _run_check(vm, task) if task.check else None
        if check is not None and check["exit_code"] != 0:
            raise failed(
                f"check failed (exit code {check['exit_code']}): {task.check}",
                stop_reason=stop_reason,
                check_exit_code=check["exit_code"],
                check_output=check["output"],
            )
    finally:
        await _shielded(close())
    text = str(reply.get("text") or "")
    finished = time.time()
    result: dict[str, Any] = {
        "status": "completed",
        "text": text[:MAX_TEXT],
        "tool_calls": calls,
        "usage": reply.get("usage"),
        "stop_reason": stop_reason,
        "started_at": started,
        "finished_at": finished,
        "duration_ms": int((finished - started) * 1000),
        "vm": vm_key,
        "session_id": sid,
        "error": None,
        "check": check,
    }
    if len(text) > MAX_TEXT:
        result["text_truncated"] = True
    if calls_cut:
        result["tool_calls_truncated"] = True
    return result


async def _run_check(vm: ActorHandle, task: AgentTask) -> dict[str, Any]:
    assert task.check is not None
    timeout = min(task.timeout, CHECK_TIMEOUT) if task.timeout else CHECK_TIMEOUT
    out = await vm.exec(
        ["sh", "-c", task.check],
        {"cwd": task.cwd, "timeout": timeout, "max_output": MAX_CHECK_OUTPUT},
    )
    output = (str(out.get("stdout") or "") + str(out.get("stderr") or ""))[-MAX_CHECK_OUTPUT:]
    code = int(out.get("exit_code", -1))
    if out.get("timed_out"):
        code = code or -1
        output = (output + f"\n[check timed out after {timeout} s]")[-MAX_CHECK_OUTPUT:]
    return {"exit_code": code, "output": output}


__all__ = ["AgentTask", "AgentTaskFailed", "run_agent"]
