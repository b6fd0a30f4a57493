"""Runs a DAG workflow definition as one durable run (docs/workflows.md, "Execution").

Every DAG step is a durable step ``step-<id>``: a killed server replays the run and
gets completed steps' recorded results back instead of prompting again. Steps whose
dependencies are done start at once (at most ``max_concurrency`` at a time). Around
each step: ``begin-<id>`` (a marker recorded before the first attempt: it names the
step's vm, and finding it recorded means the step runs *again*, so its vm is first
restored to the run's last checkpoint, if no step completed on that vm since) and
``checkpoint-<id>`` (``checkpoint: true``). A race step forks a vm per candidate
from a checkpoint of its vm (``fork-base-<id>``, ``race-<id>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.client import ActorHandle, Client
from orchestrator.errors import (
    ActorNotFound,
    AgentVMError,
    HistoryDivergedError,
    InvalidRequest,
    StepExhaustedError,
)
from orchestrator.storage.base import HistoryRecord
from orchestrator.workflow import WorkflowContext

from .agent import AgentTask, AgentTaskFailed, run_agent
from .definition import StepDef, WorkflowDefinition
from .interpolate import render
from .results import WorkflowFailed, WorkflowNotFound, cap, meta_of, step_error
from .validate import evaluate

log = logging.getLogger("agentvm.dag")

HOME = "/home/user"
REPO_DIR = "/home/user/repo"
# What the run's events and meta carry of a step's text (the full text is in the
# step's recorded result).
EVENT_TEXT = 16 * 1024
# The most of a vm file a ``{{steps.<id>.files.<path>}}`` reference puts in a prompt.
MAX_FILE = 32 * 1024
# Deadlines of the calls into vms the executor makes itself.
FILE_TIMEOUT = 60.0
RESTORE_TIMEOUT = 900.0
CLEANUP_TIMEOUT = 120.0
# Extra tries of a step whose vm could not be reached (not counted as its retries).
INFRA_TRIES = 2

KeepVm = Literal["on_failure", "always", "never"]


@dataclass
class RunOptions:
    """What a run request adds to the definition (``WorkflowRunRequest``, parsed)."""

    params: dict[str, Any]
    vm_key: str | None = None
    repo: str | None = None
    keep_vm: KeepVm = "on_failure"
    keep_hours: float = 24.0
    # Puts the request's repo into a vm (the built-ins' ``put_repo`` with the policy).
    put_repo: Callable[[ActorHandle], Awaitable[Any]] | None = None
    vm_input: Any = None


# Errors of a prompt that say the vm or its session went away under it (a host
# restart: the supervisor reconnecting), not that the agent failed.
_VM_TROUBLE = {("session", "not_found"), ("session", "closed"), ("session", "agent_exited")}


def _vm_trouble(exc: AgentVMError) -> bool:
    cause = exc.metadata.get("cause")
    if not isinstance(cause, dict):
        return False
    group, code = cause.get("group"), cause.get("code")
    return group == "sandbox" or (group, code) in _VM_TROUBLE


def checkpoint_name(run_id: int, sid: str, suffix: str = "") -> str:
    """``wf-<run_id>-<step id><suffix>``; a name longer than a checkpoint name may be
    (64) has the step id hashed."""
    name = f"wf-{run_id}-{sid}{suffix}"
    if len(name) > 64:
        name = f"wf-{run_id}-{hashlib.sha256(sid.encode()).hexdigest()[:16]}{suffix}"
    return name


def _recorded(ctx: WorkflowContext, name: str) -> HistoryRecord | None:
    """The entry ``name`` of the context's scope as recorded so far (None: not yet):
    found before it is reached, it means the step ran before (a replay or a retry)."""
    return ctx._run.records.get(ctx._path(name))


def _recorded_error(ctx: WorkflowContext, name: str) -> dict[str, Any] | None:
    rec = _recorded(ctx, name)
    if rec is None or not rec.error:
        return None
    info = json.loads(rec.error)
    return {"group": "workflow", "code": "step_failed", "message": info.get("message", "")}


class DagRun:
    """One run of a definition (an incarnation: built again on every replay)."""

    def __init__(
        self, ctx: WorkflowContext, run_id: int, defn: WorkflowDefinition, opts: RunOptions
    ) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.defn = defn
        self.opts = opts
        self.params = opts.params
        self.client: Client = ctx.client()
        self.by_id = {s.id: s for s in defn.steps}
        self.prefix = f"wf-{defn.name}-{run_id}"
        self.cwd = REPO_DIR if opts.repo else HOME
        self.results: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.meta_steps: dict[str, dict[str, Any]] = {
            s.id: {"status": "pending", "attempts": 0} for s in defn.steps
        }
        # label → vm key: every vm the run uses (the meta's ``vms``).
        self.vms: dict[str, str] = {}
        # Every vm key the run has used, also those a race winner replaced since:
        # all of them are released at the end.
        self.used: set[str] = set()
        # A race step's winner replaces its vm for the steps that start after it.
        self.replaced: dict[str, str] = {}
        self.checkpoints: dict[str, list[dict[str, Any]]] = {}
        self.sem = asyncio.Semaphore(defn.max_concurrency)
        self.meta_lock = asyncio.Lock()
        self._preload()

    # -- what the history already holds

    def _preload(self) -> None:
        """Completed steps and checkpoints recorded so far (a replay, a retried run):
        a restore decision must see them even before their own replay is reached."""
        for s in self.defn.steps:
            rec = _recorded(self.ctx, f"step-{s.id}")
            if rec is not None and rec.status == "completed" and rec.output:
                result = self.results[s.id] = json.loads(rec.output)
                self.meta_steps[s.id] = meta_of(result)
            cp = _recorded(self.ctx, f"checkpoint-{s.id}")
            if cp is not None and cp.status == "completed" and cp.output:
                entry = json.loads(cp.output)
                if s.id in self.results:
                    self._note_checkpoint(self.results[s.id]["vm"], entry)

    def _note_checkpoint(self, key: str, entry: dict[str, Any]) -> None:
        known = self.checkpoints.setdefault(key, [])
        if all(e["name"] != entry["name"] for e in known):
            known.append(entry)

    def _replayed(self, sid: str) -> bool:
        rec = _recorded(self.ctx, f"step-{sid}")
        return rec is not None and rec.status == "completed"

    # -- vms

    def _slot(self, s: StepDef) -> tuple[str, str]:
        """(label, key) of the vm a step uses when it starts."""
        if s.vm == "shared":
            label, key = "shared", self.opts.vm_key or self.prefix
        elif s.vm == "fresh":
            label, key = s.id, f"{self.prefix}-{s.id}"
        else:
            label, key = f"vm:{s.vm}", f"{self.prefix}-{s.vm}"
        return label, self.replaced.get(label, key)

    def vm(self, key: str) -> ActorHandle:
        return self.client.vm.get_or_create(key, input=self.opts.vm_input)

    async def _use_vm(self, label: str, key: str) -> None:
        self.used.add(key)
        if self.vms.get(label) != key:
            self.vms[label] = key
            await self._meta()

    # -- events and meta

    def _emit(self, event: str, **payload: Any) -> None:
        self.ctx.broadcast(event, {"run_id": self.run_id, **payload})

    async def _meta(self, **fields: Any) -> None:
        async with self.meta_lock:
            await self.ctx.run_meta(
                workflow=self.defn.name,
                version=self.defn.version,
                params=self.params,
                vms=dict(self.vms),
                steps={k: dict(v) for k, v in self.meta_steps.items()},
                **fields,
            )

    async def _step_meta(self, sid: str, **fields: Any) -> None:
        self.meta_steps[sid].update(fields)
        await self._meta()

    # -- the run

    async def run(self) -> dict[str, Any]:
        ctx = self.ctx
        first = _recorded(ctx, "start") is None
        await ctx.step("start", lambda: {"at": time.time()})
        if first:
            self._emit(
                "workflow_started",
                workflow=self.defn.name,
                version=self.defn.version,
                params=self.params,
                steps=[s.id for s in self.defn.steps],
            )
        await self._meta()
        if self.opts.repo and self.opts.put_repo is not None:
            put = self.opts.put_repo
            key = self.opts.vm_key or self.prefix
            await self._use_vm("shared", key)
            await ctx.step("repo", lambda: put(self.vm(key)), max_retries=2, timeout=900)
        await self._schedule()
        return await self._outcome()

    async def _schedule(self) -> None:
        pending = [s.id for s in self.defn.steps]
        tasks: dict[asyncio.Task[dict[str, Any]], str] = {}
        try:
            while pending or tasks:
                for sid in list(pending):
                    s = self.by_id[sid]
                    if not all(d in self.status for d in s.depends_on):
                        continue
                    pending.remove(sid)
                    skip = self._skip_reason(s)
                    if skip is not None and not self._replayed(sid):
                        await self._skip(s, *skip)
                        continue
                    task = asyncio.ensure_future(self._run_step(s))
                    tasks[task] = sid
                if not tasks:
                    if pending:  # unreachable for a validated (acyclic) definition
                        raise AgentVMError(f"steps {pending} can never start")
                    break
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    sid = tasks.pop(t)
                    self.status[sid] = t.result()["status"]
        finally:
            # Cancelled (the run is), or a step raised: nothing new starts and the
            # steps in flight stop (their agents' prompts are cancelled).
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _skip_reason(self, s: StepDef) -> tuple[str, str | None] | None:
        for dep in s.depends_on:
            st = self.status[dep]
            if st == "failed" and not self.by_id[dep].continue_on_failure:
                return "dependency_failed", dep
            if st == "skipped" and self.results[dep].get("reason") == "dependency_failed":
                return "dependency_failed", dep
        if s.when is not None and not evaluate(s.when, self.params, self.status):
            return "condition", None
        return None

    async def _skip(self, s: StepDef, reason: str, dep: str | None) -> None:
        result: dict[str, Any] = {"status": "skipped", "reason": reason, "text": ""}
        extra: dict[str, Any] = {"dependency": dep} if dep else {}
        result.update(extra)
        self.results[s.id] = result
        self.status[s.id] = "skipped"
        # Entries of an earlier attempt at the step (a retried run where it is now
        # skipped) are declared, so the replay does not count them as diverged.
        for name in ("begin", "step", "checkpoint", "fork-base", "race"):
            rec = _recorded(self.ctx, f"{name}-{s.id}")
            if rec is not None:
                await self.ctx.removed(f"{name}-{s.id}", rec.kind)
        self._emit("step_skipped", step=s.id, reason=reason, **extra)
        await self._step_meta(s.id, status="skipped", reason=reason, **extra)

    async def _run_step(self, s: StepDef) -> dict[str, Any]:
        async with self.sem:
            if s.race:
                return await self._race_step(s)
            return await self._agent_step(s)

    async def _begin(self, s: StepDef) -> tuple[str, str, bool, bool]:
        """The step's vm label and key, whether it runs again, whether it is done."""
        rerun = _recorded(self.ctx, f"begin-{s.id}") is not None
        label, key = self._slot(s)
        begin = await self.ctx.step(
            f"begin-{s.id}", lambda: {"vm": key, "label": label, "at": time.time()}
        )
        done = self._replayed(s.id)
        # Also for a step only replayed: the run destroys every vm it used at the end.
        await self._use_vm(begin["label"], begin["vm"])
        return begin["label"], begin["vm"], rerun, done

    async def _started(self, sid: str, key: str, attempt: int) -> None:
        self._emit("step_started", step=sid, attempt=attempt, vm=key)
        now = time.time()
        fields: dict[str, Any] = {"status": "running", "attempts": attempt, "vm": key}
        if attempt == 1 or "started_at" not in self.meta_steps[sid]:
            fields["started_at"] = now
        await self._step_meta(sid, **fields)

    async def _agent_step(self, s: StepDef) -> dict[str, Any]:
        sid = s.id
        _, key, rerun, done = await self._begin(s)
        prior = _recorded(self.ctx, f"step-{sid}")
        count = [prior.attempts if prior is not None and not done else 0]
        started_at = [time.time()]

        async def attempt() -> dict[str, Any]:
            count[0] += 1
            n = count[0]
            await self._started(sid, key, n)
            restored = await self._maybe_restore(key) if (rerun or n > 1) else None
            started = time.time()
            started_at[0] = started
            out = await self._agent(key, s, s.prompt, s.system_prompt, s.agent_type, s.model)
            finished = time.time()
            out.update(
                status="completed",
                attempts=n,
                started_at=started,
                finished_at=finished,
                duration_ms=int((finished - started) * 1000),
                vm=key,
            )
            if restored is not None:
                out["restored_from"] = restored
            return out

        try:
            result = await self.ctx.step(
                f"step-{sid}", attempt, max_retries=s.retries, timeout=s.timeout
            )
        except (asyncio.CancelledError, HistoryDivergedError):
            raise
        except Exception as exc:
            return await self._failed(s, key, exc, max(count[0], 1), started_at[0], done)
        return await self._completed(s, key, result, replayed=done)

    async def _completed(
        self, s: StepDef, key: str, result: dict[str, Any], *, replayed: bool
    ) -> dict[str, Any]:
        sid = s.id
        if s.checkpoint:
            name = checkpoint_name(self.run_id, sid)
            try:
                entry = await self.ctx.step(
                    f"checkpoint-{sid}",
                    lambda: self.vm(result["vm"]).checkpoint(name),
                    max_retries=2,
                    timeout=RESTORE_TIMEOUT,
                )
            except (asyncio.CancelledError, HistoryDivergedError):
                raise
            except Exception as exc:
                # The agent's work stays recorded; a retried run takes the checkpoint.
                return await self._failed(
                    s, key, exc, result.get("attempts", 1), result.get("started_at"), False
                )
            self._note_checkpoint(result["vm"], entry)
            result = {**result, "checkpoint": name}
        self.results[sid] = result
        if not replayed:
            self._emit(
                "step_completed",
                step=sid,
                text=cap(str(result.get("text") or ""), EVENT_TEXT),
                duration_ms=result.get("duration_ms"),
                usage=result.get("usage"),
            )
        await self._step_meta(sid, **meta_of(result))
        return result

    async def _failed(
        self,
        s: StepDef,
        key: str,
        exc: BaseException,
        attempts: int,
        started: float | None,
        replayed: bool,
    ) -> dict[str, Any]:
        err = step_error(exc)
        if isinstance(exc, StepExhaustedError):
            attempts = int(exc.metadata.get("attempts") or attempts)
            # The last attempt's own error (the agent's turn, the check) when it ran in
            # this process; else what the history kept of it.
            cause = exc.__cause__
            if isinstance(cause, AgentVMError):
                err = step_error(cause)
            else:
                err = _recorded_error(self.ctx, f"step-{s.id}") or err
        meta = err.get("metadata") or {}
        check = None
        if meta.get("check_exit_code") is not None:
            check = {"exit_code": meta["check_exit_code"], "output": meta.get("check_output")}
        finished = time.time()
        result: dict[str, Any] = {
            "status": "failed",
            "text": "",
            "tool_calls": [],
            "usage": None,
            "stop_reason": meta.get("stop_reason"),
            "attempts": attempts,
            "started_at": started,
            "finished_at": finished,
            "duration_ms": int((finished - started) * 1000) if started else None,
            "vm": key,
            "session_id": None,
            "error": err,
            "check": check,
        }
        self.results[s.id] = result
        self._emit("step_failed", step=s.id, error=err)
        await self._step_meta(
            s.id,
            status="failed",
            attempts=attempts,
            finished_at=finished,
            error=err,
            check=check,
            vm=key,
        )
        return result

    # -- agents, files, restores

    async def _agent(
        self,
        key: str,
        s: StepDef,
        prompt: str,
        system_prompt: str | None,
        agent_type: str | None,
        model: str | None,
    ) -> dict[str, Any]:
        text = await self._render(prompt)
        system = await self._render(system_prompt) if system_prompt else None
        task = AgentTask(
            prompt=text,
            name=s.id,
            agent_type=agent_type,
            model=model,
            system_prompt=system,
            allowed_tools=s.allowed_tools,
            mode=s.mode,
            check=s.check,
            vm=key,
            cwd=self.cwd,
        )
        # Retries are the durable step's, timeouts too: the task itself has neither.
        # But a vm that is not there (yet) is no failure of the agent: after a host
        # restart its supervisor may still be dialling in. Such errors (not the
        # agent's turn or check: AgentTaskFailed) get a few more tries of their own.
        for left in range(INFRA_TRIES, -1, -1):
            try:
                await self.vm(key).resolve()  # created here (run_agent needs it to exist)
                return dict(
                    await run_agent(
                        self.client, key, task, stopping=lambda: self.ctx.engine_stopping
                    )
                )
            except InvalidRequest:
                raise
            except AgentVMError as exc:
                if isinstance(exc, AgentTaskFailed) and not _vm_trouble(exc):
                    raise  # the agent's turn or the check failed: the step's retries
                if not left or self.ctx.engine_stopping:
                    raise
                log.info("run %s: vm %s not usable (%s); trying again", self.run_id, key, exc)
        raise AssertionError("unreachable")

    async def _render(self, template: str) -> str:
        return await render(
            template, params=self.params, steps=self.results, fetch_file=self._fetch_file
        )

    async def _fetch_file(self, sid: str, path: str) -> str:
        result = self.results.get(sid) or {}
        key = result.get("vm")
        if not key or result.get("status") == "skipped":
            return ""
        full = path if path.startswith("/") else f"{self.cwd}/{path}"
        vm = self.vm(str(key))
        try:
            async with asyncio.timeout(FILE_TIMEOUT):
                content = await vm.read_file(full, {"limit": MAX_FILE + 1})
        except (TimeoutError, AgentVMError) as exc:
            log.info("run %s: {{steps.%s.files.%s}}: %s", self.run_id, sid, path, exc)
            return ""
        data = content if isinstance(content, bytes) else str(content).encode()
        return data[:MAX_FILE].decode(errors="replace")

    async def _maybe_restore(self, key: str) -> str | None:
        """Restore ``key`` to the newest checkpoint this run took of it, unless a step
        completed on it after that checkpoint (its changes must stay)."""
        cps = self.checkpoints.get(key)
        if not cps:
            return None
        newest = max(cps, key=lambda e: float(e.get("created_at") or 0))
        at = float(newest.get("created_at") or 0)
        for r in self.results.values():
            if r.get("vm") == key and r.get("status") == "completed":
                if float(r.get("finished_at") or 0) > at:
                    return None
        async with asyncio.timeout(RESTORE_TIMEOUT):
            await self.vm(key).restore(newest["name"])
        return str(newest["name"])

    # -- race steps

    async def _race_step(self, s: StepDef) -> dict[str, Any]:
        from .race import race_step

        return await race_step(self, s)

    # -- the end

    async def _outcome(self) -> dict[str, Any]:
        failed = [sid for sid, st in self.status.items() if st == "failed"]
        completed = [sid for sid, st in self.status.items() if st == "completed"]
        outcome = "completed" if not failed else ("partial" if completed else "failed")
        steps = {s.id: self.status.get(s.id, "pending") for s in self.defn.steps}
        self._emit("workflow_completed", status=outcome, steps=steps)
        await self._meta(status=outcome)
        if failed:
            raise WorkflowFailed(
                f"workflow {self.defn.name!r} ended {outcome}: "
                f"{len(failed)} step(s) failed ({', '.join(failed)})",
                status=outcome,
                failed=failed,
            )
        return {
            "workflow": self.defn.name,
            "version": self.defn.version,
            "status": outcome,
            "params": self.params,
            "steps": {s.id: self.results.get(s.id) for s in self.defn.steps},
            "order": [s.id for s in self.defn.steps],
            "vms": dict(self.vms),
        }

    async def release(self, outcome: str | None) -> None:
        """Destroy the run's vms (or keep them, per ``keep_vm``); never the request's."""
        from orchestrator.builtin._runs import release_vm

        keep = self.opts.keep_vm == "always" or (
            self.opts.keep_vm == "on_failure" and outcome != "completed"
        )
        keys = {k for k in self.used | set(self.vms.values()) if k != self.opts.vm_key}
        for key in sorted(keys):
            await release_vm(self.ctx, key, keep=keep, keep_hours=self.opts.keep_hours)


async def execute(
    ctx: WorkflowContext, run_id: int, defn: WorkflowDefinition, opts: RunOptions
) -> dict[str, Any]:
    """Run ``defn`` to its end: the result when every step completed or was skipped;
    :class:`WorkflowFailed` (``partial``/``failed``) otherwise."""
    dag = DagRun(ctx, run_id, defn, opts)
    outcome: str | None = None
    try:
        result = await dag.run()
        outcome = "completed"
        return result
    except WorkflowFailed as exc:
        outcome = str(exc.metadata.get("status"))
        raise
    finally:
        await dag.release(outcome)


async def destroy_quietly(ctx: WorkflowContext, keys: list[str]) -> None:
    """Destroy vms (shielded, bounded); skipped while the engine stops."""
    if ctx.engine_stopping or not keys:
        return

    async def go() -> None:
        for key in keys:
            with contextlib.suppress(ActorNotFound, AgentVMError):
                await ctx.client().vm.get(key).destroy()

    task = asyncio.ensure_future(go())
    try:
        await asyncio.wait_for(asyncio.shield(task), CLEANUP_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("could not destroy vms %s: %s", keys, exc)


__all__ = [
    "DagRun",
    "RunOptions",
    "WorkflowFailed",
    "WorkflowNotFound",
    "destroy_quietly",
    "execute",
]
