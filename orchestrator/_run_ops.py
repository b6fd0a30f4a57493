"""Operating runs and main workflows: list, get, cancel, retry, recover.

The engine's public methods (``engine.cancel_run`` ...) delegate here. Every change
is one atomic batch: a cancelled run's status and its message's removal, a retried
run's cleared step entries, its status and its message again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import TYPE_CHECKING

from .errors import (
    InvalidRequest,
    RunNotCancellable,
    RunNotFound,
    RunNotRetryable,
    WorkflowNotRecoverable,
)
from .inspect import WorkflowHistory
from .records import RunDetail, RunInfo, run_detail, run_info
from .runs import UNWIND_SECONDS, RunState
from .storage import base
from .storage.base import RUN_FINISHED, HistoryRecord, MessageRecord, RunRecord, run_scope

if TYPE_CHECKING:
    from .engine import Engine

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


def _check_status(status: str | None) -> None:
    if status is not None and status not in RUN_STATUSES:
        raise InvalidRequest(
            f"unknown run status {status!r}; one of {', '.join(RUN_STATUSES)}",
            field="status",
            allowed=list(RUN_STATUSES),
        )


def _check_run_id(run_id: int) -> None:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or run_id < 1:
        raise InvalidRequest(f"a run id is a positive integer, not {run_id!r}", field="run_id")


async def list_runs(
    engine: Engine, actor_id: str | None, *, status: str | None, name: str | None
) -> list[RunInfo]:
    _check_status(status)
    if actor_id is not None:
        await engine.inspector.get_state(actor_id)  # ActorNotFound for an unknown actor
    recs = await engine.store.list_runs(actor_id, status=status, name=name)
    return [run_info(r) for r in recs]


async def _load(engine: Engine, actor_id: str, run_id: int) -> RunRecord:
    _check_run_id(run_id)
    rec = await engine.store.get_run(actor_id, run_id)
    if rec is None:
        raise RunNotFound(f"no run {run_id} on actor {actor_id}", run_id=run_id)
    return rec


async def get_run(engine: Engine, actor_id: str, run_id: int) -> RunDetail:
    rec = await _load(engine, actor_id, run_id)
    history = await engine.store.load_run_history(actor_id, run_id)
    detail = run_detail(rec, history)
    inst = engine.instances.get(actor_id)
    st = inst.runs.runs.get(run_id) if inst is not None else None
    if st is not None and st.workflow is not None:
        # A step running right now has no entry yet: show it.
        from .inspect import HistoryEntry

        prefix = run_scope(run_id) + "/"
        known = {e.path for e in detail.history}
        for path, started in st.workflow.running_steps.items():
            rel = path.removeprefix(prefix)
            if rel not in known:
                detail.history.append(
                    HistoryEntry(
                        path=rel, kind="step", status="running", attempts=0, started_at=started
                    )
                )
    return detail


async def _unwind(st: RunState) -> None:
    """Wait (bounded) for a cancelled run's task to end."""
    task = st.task
    if task is not None and not task.done():
        await asyncio.wait({task}, timeout=UNWIND_SECONDS)


async def cancel_run(engine: Engine, actor_id: str, run_id: int) -> RunInfo:
    rec = await _load(engine, actor_id, run_id)
    if rec.status in RUN_FINISHED:
        raise RunNotCancellable(
            f"run {run_id} is {rec.status}; only a queued or running run can be cancelled",
            run_id=run_id,
            status=rec.status,
        )
    inst = await engine.instance(actor_id)
    queues = inst.runs
    st = queues.runs.get(run_id)
    if st is None or st.finishing or st.cancel_requested:
        if st is not None:
            await _unwind(st)
        rec = await _load(engine, actor_id, run_id)
        if rec.status in RUN_FINISHED:
            raise RunNotCancellable(
                f"run {run_id} is {rec.status}; only a queued or running run can be cancelled",
                run_id=run_id,
                status=rec.status,
            )
        raise RunNotCancellable(
            f"run {run_id} is not served by this actor's code (queue {rec.queue!r})",
            run_id=run_id,
            status=rec.status,
        )
    # Recorded before the task is interrupted: a crash right after must not resume it.
    st.cancel_requested = True
    done = dataclasses.replace(st.record, status="cancelled", finished_at=time.time())
    await inst.store.submit(queues.finish_ops(done, with_state=False))
    st.record = done
    queued = queues.dequeue(st)
    queues.announce(done)
    if not queued and st.task is not None:
        st.task.cancel()
        await _unwind(st)
    return run_info(done)


def _to_clear(history: list[HistoryRecord]) -> list[str]:
    """Step entries a retry runs again: failed, mid-retry, or rolled back (undone)."""
    return [
        h.path
        for h in history
        if h.kind == "step" and h.status in ("failed", "retrying", "rolled_back")
    ]


def _without(history: list[HistoryRecord], paths: list[str]) -> list[HistoryRecord]:
    out = []
    for h in history:
        if any(h.path == p or h.path.startswith(p + "/") for p in paths):
            continue
        out.append(h)
    return out


async def retry_run(engine: Engine, actor_id: str, run_id: int) -> RunInfo:
    rec = await _load(engine, actor_id, run_id)
    inst = await engine.instance(actor_id)
    st = inst.runs.runs.get(run_id)
    if st is not None and st.cancel_requested:
        await _unwind(st)  # a just-cancelled run: let its step unwind first
        rec = await _load(engine, actor_id, run_id)
        st = inst.runs.runs.get(run_id)
    if rec.status not in ("failed", "cancelled") or st is not None:
        raise RunNotRetryable(
            f"run {run_id} is {rec.status}; only a failed or cancelled run can be retried",
            run_id=run_id,
            status=rec.status,
        )
    if rec.queue not in inst.runs:
        raise RunNotRetryable(
            f"queue {rec.queue!r} of run {run_id} is not a run queue of {inst.name!r} any more",
            run_id=run_id,
            queue=rec.queue,
        )
    history = await engine.store.load_run_history(actor_id, run_id)
    clear = _to_clear(history)
    again = dataclasses.replace(
        rec, status="queued", started_at=None, finished_at=None, result=None, error=None
    )
    msg = MessageRecord(run_id, actor_id, rec.queue, rec.input, rec.created_at)
    ops: list[base.Op] = [(base.DELETE_HISTORY_TREE, actor_id, p) for p in clear]
    ops += [(base.PUT_RUN, again), (base.PUT_MESSAGE, msg)]
    await inst.store.submit(ops)
    inst.runs.add(again, _without(history, clear))
    return run_info(again)


# --- the main workflow ----------------------------------------------------------------------


async def recover_workflow(engine: Engine, actor_id: str) -> WorkflowHistory:
    inst = await engine.instance(actor_id)
    if not inst.definition.is_workflow or inst.record.workflow_status != "failed":
        raise WorkflowNotRecoverable(
            f"the workflow of actor {inst.name!r} {list(inst.key)!r} is "
            f"{inst.record.workflow_status or 'not a workflow'}; only a failed one recovers",
            status=inst.record.workflow_status,
        )
    history = await engine.store.load_history(actor_id)
    clear = _to_clear(history)
    ops: list[base.Op] = [(base.DELETE_HISTORY_TREE, actor_id, p) for p in clear]
    ops.append((base.SET_WORKFLOW, actor_id, "running", None, None))
    await inst.store.submit(ops)
    inst.record.workflow_status = "running"
    inst.record.workflow_error = None
    inst.start_main(_without(history, clear))
    return await engine.history(actor_id)


async def cancel_workflow(engine: Engine, actor_id: str) -> WorkflowHistory:
    inst = await engine.instance(actor_id)
    status = inst.record.workflow_status
    if not inst.definition.is_workflow or status not in ("running", "failed"):
        raise WorkflowNotRecoverable(
            f"the workflow of actor {inst.name!r} {list(inst.key)!r} is "
            f"{status or 'not a workflow'}; only a running or failed one can be cancelled",
            status=status,
        )
    error = inst.record.workflow_error
    await inst.store.submit([(base.SET_WORKFLOW, actor_id, "cancelled", None, error)])
    inst.record.workflow_status = "cancelled"
    await inst.stop_main()
    inst.release_leases()
    inst.broadcast_internal("workflow_cancelled", json.loads(error) if error else None)
    return await engine.history(actor_id)
