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
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ActorNotFound, AgentVMError, InvalidRequest, StepExhaustedError

if TYPE_CHECKING:
    from ..client import ActorHandle, Client
    from ..workflow import RaceResult, WorkflowContext

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
# The most of an error message (it may quote what the agent said) a result keeps.
MAX_ERROR_MESSAGE = 2000
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
                f"the agent's turn failed: {exc.message[:MAX_ERROR_MESSAGE]}",
                stop_reason="error",
                check_exit_code=None,
                check_output=None,
                cause={"group": exc.group, "code": exc.code},
            ) from exc
        stop_reason = str(reply.get("stop_reason"))[:64]
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
        "usage": _usage(reply.get("usage")),
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


def _usage(value: Any) -> dict[str, Any] | None:
    """The turn's token counts as the agent reported them: numbers only, a few keys
    (the agent is untrusted; its answer must not grow the step result)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool):
            out[k[:64]] = v
            if len(out) >= 32:
                break
    return out


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


# --- ctx.parallel / ctx.race of agent tasks ----------------------------------------------


class AgentTaskCancelled(AgentTaskFailed):
    """A task of ``ctx.parallel(..., fail_fast=True)`` cancelled because another failed."""

    code = "step_cancelled"


def check_tasks(tasks: Sequence[AgentTask | dict[str, Any]]) -> list[AgentTask]:
    """The tasks of a ``ctx.parallel`` / ``ctx.race`` (``AgentTask``s or dicts of their
    fields), validated: a bad one raises ``InvalidRequest`` naming ``tasks.<i>.<field>``."""
    if isinstance(tasks, str | bytes | dict) or not isinstance(tasks, Sequence):
        raise InvalidRequest("tasks must be a list of agent tasks", field="tasks")
    if not tasks:
        raise InvalidRequest("at least one agent task is needed", field="tasks")
    out: list[AgentTask] = []
    for i, task in enumerate(tasks):
        if isinstance(task, AgentTask):
            out.append(task)
            continue
        if not isinstance(task, dict):
            raise InvalidRequest(f"tasks.{i} must be an AgentTask or a dict", field=f"tasks.{i}")
        try:
            out.append(AgentTask.model_validate(task))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(["tasks", str(i), *(str(p) for p in first["loc"])])
            raise InvalidRequest(f"{where}: {first['msg']}", field=where) from None
    return out


def task_names(tasks: Sequence[AgentTask]) -> list[str]:
    """Each task's branch name (``task-<i>`` by default); names must differ."""
    names: list[str] = []
    for i, task in enumerate(tasks):
        name = task.name or f"task-{i}"
        if name in names:
            raise InvalidRequest(f"duplicate task name {name!r}", field=f"tasks.{i}.name")
        names.append(name)
    return names


def default_name(ctx: WorkflowContext, kind: str) -> str:
    """``parallel-<n>`` / ``race-<n>``: counted per context scope, so the same on replay."""
    counts: dict[str, int] = ctx.__dict__.setdefault("_agent_task_counts", {})
    counts[kind] = counts.get(kind, 0) + 1
    return f"{kind}-{counts[kind]}"


def task_vm_key(ctx: WorkflowContext, group: str, task_name: str) -> str:
    """The fresh vm of task ``task_name`` of the parallel/race ``group`` (a name path):
    ``task-<run id or actor key>-<hash of actor and path>-<task name>``, the same on
    every replay and distinct between actors and scopes."""
    owner = str(ctx.run_id) if ctx.run_id is not None else "-".join(ctx.key) or ctx.name
    digest = hashlib.sha256(f"{ctx.actor_id}\0{group}".encode()).hexdigest()[:10]
    return f"task-{owner[:40]}-{digest}-{task_name}"


async def _fresh_vm(client: Client, key: str, fork_from: str | None) -> None:
    """Make vm ``key`` anew (one left by an interrupted attempt goes first: its
    workspace is half-changed), empty or forked from ``"<vm>@<checkpoint>"``."""
    with contextlib.suppress(ActorNotFound):
        await client.vm.get(key).destroy()
    if fork_from is None:
        await _to_the_end(client.vm.create(key))
        return
    source, _, checkpoint = fork_from.rpartition("@")
    await _to_the_end(client.vm.get(source).fork(key, {"checkpoint": checkpoint}))


async def _to_the_end(coro: Any) -> Any:
    """Await ``coro``; cancelled meanwhile, let it end first (bounded): a vm whose
    creation went on after the caller's clean-up had run would be left behind."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, VM_CLEANUP_TIMEOUT)
        raise


async def destroy_vms(ctx: WorkflowContext, keys: Sequence[str]) -> None:
    """Destroy task vms, shielded (a cancelled run still cleans up) and bounded; not
    while the engine stops (the run resumes after the restart and makes them anew)."""
    if ctx.engine_stopping or not keys:
        return
    client = ctx.client()

    async def one(key: str) -> None:
        with contextlib.suppress(ActorNotFound):
            await client.vm.get(key).destroy()

    await _shielded(asyncio.gather(*(one(k) for k in keys)), VM_CLEANUP_TIMEOUT)


def _failed_result(exc: BaseException, vm_key: str, status: str) -> dict[str, Any]:
    """The step result of a task that failed (or was cancelled by ``fail_fast``)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, AgentVMError) else exc
    error: dict[str, Any] = (
        cause.to_dict()
        if isinstance(cause, AgentVMError)
        else {"type": type(cause).__name__, "message": str(cause)}
    )
    error["message"] = str(error.get("message", ""))[:MAX_ERROR_MESSAGE]
    meta: dict[str, Any] = error.get("metadata") or {}
    code = meta.get("check_exit_code")
    now = time.time()
    return {
        "status": status,
        "text": "",
        "tool_calls": [],
        "usage": None,
        "stop_reason": meta.get("stop_reason"),
        "started_at": None,
        "finished_at": now,
        "duration_ms": None,
        "vm": vm_key,
        "session_id": meta.get("session_id"),
        "error": error,
        "check": None if code is None else {"exit_code": code, "output": meta.get("check_output")},
    }


class _Group:
    """One ``ctx.parallel`` / ``ctx.race``: its tasks, names and vms."""

    def __init__(
        self, ctx: WorkflowContext, tasks: Sequence[AgentTask | dict[str, Any]], name: str
    ) -> None:
        self.ctx, self.tasks, self.name = ctx, check_tasks(tasks), name
        self.names = task_names(self.tasks)
        group = f"{ctx.scope}/{name}" if ctx.scope else name
        self.vms = [
            t.vm or task_vm_key(ctx, group, n) for t, n in zip(self.tasks, self.names, strict=True)
        ]

    def fresh(self, i: int) -> bool:
        return self.tasks[i].vm is None

    async def run(self, bctx: WorkflowContext, i: int) -> dict[str, Any]:
        """Task ``i`` as the durable step ``agent`` of its branch: a fresh vm (per
        attempt), the agent's turn, the check."""
        task, key = self.tasks[i], self.vms[i]

        async def attempt() -> dict[str, Any]:
            client = bctx.client()
            if self.fresh(i):
                await _fresh_vm(client, key, task.fork_from)
            return await run_agent(client, key, task, stopping=lambda: bctx.engine_stopping)

        result: dict[str, Any] = await bctx.step("agent", attempt, max_retries=task.retries)
        return result


async def parallel(
    ctx: WorkflowContext,
    tasks: Sequence[AgentTask | dict[str, Any]],
    *,
    max_concurrency: int | None = None,
    fail_fast: bool = False,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """``ctx.parallel``: run agent tasks concurrently (at most ``max_concurrency`` at
    a time) as the branches of ``ctx.join(name)``; their step results in task order.
    A failed task's result has ``status: "failed"`` and its ``error`` (nothing is
    raised for it); with ``fail_fast`` the first failure cancels the others (their
    status ``"cancelled"``). Fresh vms are destroyed after their task unless
    ``keep_vm``."""
    if max_concurrency is not None and max_concurrency < 1:
        raise InvalidRequest("max_concurrency must be at least 1", field="max_concurrency")
    g = _Group(ctx, tasks, name or default_name(ctx, "parallel"))
    limit = asyncio.Semaphore(max_concurrency or len(g.tasks))
    failed = asyncio.Event()
    works: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def limited(bctx: WorkflowContext, i: int) -> dict[str, Any]:
        async with limit:
            if failed.is_set():
                raise AgentTaskCancelled(
                    "cancelled: another task failed (fail_fast)", stop_reason="cancelled"
                )
            return await g.run(bctx, i)

    async def branch(bctx: WorkflowContext, i: int) -> dict[str, Any]:
        work = asyncio.ensure_future(limited(bctx, i))
        works[i] = work
        try:
            return await work
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if failed.is_set() and me is not None and me.cancelling() == 0:
                # A sibling failed (fail_fast) and cancelled this task's work.
                stop = AgentTaskCancelled(
                    "cancelled: another task failed (fail_fast)", stop_reason="cancelled"
                )
                return _failed_result(stop, g.vms[i], "cancelled")
            raise
        except (StepExhaustedError, AgentTaskFailed) as exc:
            if fail_fast and not failed.is_set():
                failed.set()
                for j, other in works.items():
                    if j != i:
                        other.cancel()
            status = "cancelled" if isinstance(exc, AgentTaskCancelled) else "failed"
            return _failed_result(exc, g.vms[i], status)
        finally:
            if g.fresh(i) and not g.tasks[i].keep_vm:
                await destroy_vms(bctx, [g.vms[i]])

    out = await ctx.join(g.name, {n: (lambda b, i=i: branch(b, i)) for i, n in enumerate(g.names)})
    return [out[n] for n in g.names]


async def race(
    ctx: WorkflowContext,
    tasks: Sequence[AgentTask | dict[str, Any]],
    *,
    name: str | None = None,
) -> RaceResult[dict[str, Any]]:
    """``ctx.race`` of agent tasks: the first whose turn ends well and whose check
    passes wins (``RaceResult(winner=<task name>, value=<its step result>)``, the
    value also has ``candidates``: each task's status); the others are cancelled and
    their fresh vms destroyed; the winner's vm is kept (named in ``value["vm"]``).
    Raises :class:`~orchestrator.errors.RaceError` when every task failed."""
    g = _Group(ctx, tasks, name or default_name(ctx, "race"))
    # Filled in as branches end; ctx.race records the winner's value only after the
    # others are cancelled and done, so the recorded value has every final status.
    candidates: dict[str, dict[str, Any]] = {n: {"status": "cancelled"} for n in g.names}

    async def branch(bctx: WorkflowContext, i: int) -> dict[str, Any]:
        n = g.names[i]
        try:
            result = await g.run(bctx, i)
        except (StepExhaustedError, AgentTaskFailed) as exc:
            candidates[n] = {"status": "failed", "error": _failed_result(exc, "", "")["error"]}
            if g.fresh(i):
                await destroy_vms(bctx, [g.vms[i]])
            raise
        except asyncio.CancelledError:
            if g.fresh(i):
                await destroy_vms(bctx, [g.vms[i]])
            raise
        candidates[n] = {"status": "completed"}
        return {**result, "candidates": candidates}

    won: str | None = None
    try:
        res = await ctx.race(
            g.name, [(n, lambda b, i=i: branch(b, i)) for i, n in enumerate(g.names)]
        )
        won = res.winner
        return res
    finally:
        # Every fresh vm but the winner's (also two that passed at once, and all of
        # them when the race failed or the run was cancelled); idempotent on replay.
        losers = [k for i, k in enumerate(g.vms) if g.fresh(i) and g.names[i] != won]
        await destroy_vms(ctx, losers)


__all__ = [
    "AgentTask",
    "AgentTaskCancelled",
    "AgentTaskFailed",
    "check_tasks",
    "destroy_vms",
    "parallel",
    "race",
    "run_agent",
    "task_vm_key",
]
