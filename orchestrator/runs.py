"""Runs: each message on a ``queue(run=handler)`` is a durable workflow of its own.

A run's record is a row of the ``runs`` table (status, input, result, error, meta,
times); its workflow history lives in ``workflow_history`` under ``~run/<run_id>/``.
Every status change commits in one batch with what goes with it: the message and
its run row at send time, the result (or error), the message's removal and the
pruning of old histories when the run ends.

Per actor instance, :class:`RunQueues` holds the unfinished runs and starts at most
``concurrency`` of each queue at once, the rest waiting in id (send) order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .errors import HistoryDivergedError, NotSerializable
from .metrics import RUNS_TOTAL
from .queues import Message
from .records import error_dict
from .storage import base
from .storage.base import HistoryRecord, MessageRecord, RunRecord, run_scope

if TYPE_CHECKING:
    from ._instance import ActorInstance
    from .definitions import QueueSpec
    from .workflow._context import WorkflowRun

log = logging.getLogger("agentvm.runs")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# How long cancel/retry wait for a cancelled run's step to unwind before answering.
UNWIND_SECONDS = 10.0


class RunState:
    """One unfinished run in memory."""

    __slots__ = ("cancel_requested", "finishing", "history", "queues", "record", "task", "workflow")

    def __init__(self, queues: RunQueues, record: RunRecord, history: list[HistoryRecord]) -> None:
        self.queues = queues
        self.record = record
        self.history = history
        self.task: asyncio.Task[None] | None = None
        self.workflow: WorkflowRun | None = None
        self.cancel_requested = False
        self.finishing = False

    @property
    def run_id(self) -> int:
        return self.record.run_id

    def step_event(self, path: str, status: str, attempt: int, error: BaseException | None) -> None:
        prefix = run_scope(self.run_id) + "/"
        payload: dict[str, Any] = {
            "run_id": self.run_id,
            "step": path[len(prefix) :] if path.startswith(prefix) else path,
            "status": status,
            "attempt": attempt,
        }
        if error is not None:
            err = error_dict(error)
            err["metadata"].pop("traceback", None)  # events stay small
            payload["error"] = err
        self.queues.inst.broadcast_internal("run_step", payload)

    async def set_meta(self, fields: dict[str, Any]) -> dict[str, Any]:
        meta = json.loads(self.record.meta or "{}")
        meta.update(fields)
        try:
            text = _dumps(meta)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"run meta is not JSON: {exc}", field="meta") from exc
        if text != self.record.meta:
            rec = dataclasses.replace(self.record, meta=text)
            await self.queues.inst.store.submit([(base.PUT_RUN, rec)])
            self.record.meta = text
        self.queues.inst.broadcast_internal("run_meta", {"run_id": self.run_id, "meta": meta})
        return meta


class RunQueues:
    """The run queues of one awake actor: unfinished runs and the concurrency limit."""

    def __init__(self, inst: ActorInstance) -> None:
        self.inst = inst
        self.specs: dict[str, QueueSpec] = inst.definition.run_queues
        self.waiting: dict[str, deque[RunState]] = {q: deque() for q in self.specs}
        self.running: dict[str, set[int]] = {q: set() for q in self.specs}
        self.runs: dict[int, RunState] = {}
        self.stopped = False

    def __contains__(self, queue: str) -> bool:
        return queue in self.specs

    def limit(self, queue: str) -> int:
        spec = self.specs[queue]
        return spec.concurrency or self.inst.engine.config.run_concurrency

    # -- building records

    def new_run(self, msg: MessageRecord) -> RunRecord:
        return RunRecord(
            run_id=msg.message_id,
            actor_id=msg.actor_id,
            queue=msg.queue,
            status="queued",
            input=msg.body,
            created_at=msg.created_at,
            name=self.inst.name,
            key=self.inst.key,
        )

    # -- scheduling

    def load(self, records: list[RunRecord], histories: dict[int, list[HistoryRecord]]) -> None:
        """Take over the unfinished runs of a waking actor: running ones resume first
        (they held slots), queued ones follow in order."""
        for rec in sorted(records, key=lambda r: (r.status != "running", r.run_id)):
            if rec.queue not in self.specs:
                log.warning(
                    "run %s of actor %s %s is on queue %r, which is no longer a run queue; "
                    "left as it is",
                    rec.run_id,
                    self.inst.name,
                    list(self.inst.key),
                    rec.queue,
                )
                continue
            rec.name, rec.key = self.inst.name, self.inst.key
            st = RunState(self, rec, histories.get(rec.run_id, []))
            self.runs[rec.run_id] = st
            if rec.status == "running":
                self._start(st)
            else:
                self.waiting[rec.queue].append(st)
        for q in self.specs:
            self.pump(q)

    def add(self, rec: RunRecord, history: list[HistoryRecord] | None = None) -> RunState:
        """A committed, queued run: start it when a slot is free."""
        st = RunState(self, rec, history or [])
        self.runs[rec.run_id] = st
        self.waiting[rec.queue].append(st)
        self.pump(rec.queue)
        return st

    def pump(self, queue: str) -> None:
        if self.stopped or not self.inst.alive:
            return
        waiting, running = self.waiting[queue], self.running[queue]
        limit = self.limit(queue)
        while waiting and len(running) < limit:
            self._start(waiting.popleft())

    def _start(self, st: RunState) -> None:
        rec = st.record
        self.running[rec.queue].add(rec.run_id)
        if rec.status != "running":
            rec.status = "running"
            rec.started_at = time.time()
            # Rides along with the run's first step commit (commits are ordered); if it
            # is lost to a crash, the run is still queued and starts again — the same.
            self.inst.store.submit_nowait([(base.PUT_RUN, dataclasses.replace(rec))])
            RUNS_TOTAL.inc(actor=self.inst.name, status="running")
            self.inst.broadcast_internal("run_started", {"run_id": rec.run_id, "queue": rec.queue})
        self.inst.active_fibers += 1
        self.inst._busy()
        st.task = asyncio.create_task(
            drive_run(st), name=f"run:{self.inst.name}:{self.inst.actor_id}:{rec.run_id}"
        )

    def _ended(self, st: RunState) -> None:
        rec = st.record
        if self.runs.get(rec.run_id) is st:
            del self.runs[rec.run_id]
        self.running[rec.queue].discard(rec.run_id)
        self.pump(rec.queue)

    def dequeue(self, st: RunState) -> bool:
        """Remove a run that has not started; False if it is running."""
        try:
            self.waiting[st.record.queue].remove(st)
        except ValueError:
            return False
        self.runs.pop(st.run_id, None)
        return True

    async def stop(self) -> None:
        """Stop every run task without recording anything: they resume on the next wake."""
        self.stopped = True
        tasks = [st.task for st in self.runs.values() if st.task is not None and not st.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- outcomes

    def finish_ops(self, rec: RunRecord, *, with_state: bool = True) -> list[base.Op]:
        """The batch that ends a run: its record, the message's removal, the actor's
        state (not for a cancel: the interrupted step's half-made changes must not
        land), and the pruning of old finished runs' histories."""
        inst = self.inst
        return [
            (base.PUT_RUN, rec),
            (base.DELETE_MESSAGE, rec.run_id),
            *(inst.state_ops() if with_state else []),
            (base.PRUNE_RUN_HISTORY, inst.actor_id, inst.engine.config.run_history_keep),
        ]

    async def finish(
        self, st: RunState, status: str, *, result: str | None = None, error: Any = None
    ) -> None:
        st.finishing = True
        rec = dataclasses.replace(
            st.record,
            status=status,
            finished_at=time.time(),
            result=result,
            error=_dumps(error) if error is not None else None,
        )
        await self.inst.store.submit(self.finish_ops(rec))
        st.record = rec
        self.announce(rec, result=result, error=error)

    def announce(self, rec: RunRecord, *, result: str | None = None, error: Any = None) -> None:
        """Tell the waiting sender and the subscribers how a run ended."""
        inst = self.inst
        RUNS_TOTAL.inc(actor=inst.name, status=rec.status)
        if rec.status == "completed":
            inst.engine.finish_waiter(rec.run_id, "completed", _loads(result))
            inst.broadcast_internal("run_completed", {"run_id": rec.run_id})
        elif rec.status == "failed":
            inst.engine.finish_waiter(rec.run_id, "failed", error)
            inst.broadcast_internal("run_failed", {"run_id": rec.run_id, "error": error})
        else:
            inst.engine.finish_waiter(rec.run_id, "cancelled", None)
            inst.broadcast_internal("run_cancelled", {"run_id": rec.run_id})


def _loads(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


async def drive_run(st: RunState) -> None:
    """Run (or replay) one run's handler and record how it ended."""
    from .workflow._context import WorkflowContext, WorkflowRun

    queues = st.queues
    inst = queues.inst
    rec = st.record
    try:
        handler = queues.specs[rec.queue].run
        assert handler is not None
        wf = WorkflowRun(inst, st.history, run=st)
        st.workflow = wf
        st.history = []  # replay state now lives in wf
        ctx = WorkflowContext(wf, run_scope(rec.run_id))
        message = Message(inst, rec.run_id, rec.queue, json.loads(rec.input), False)
        try:
            result = await handler(ctx, message)
            ctx._finish()
            try:
                output = _dumps(result)
            except (TypeError, ValueError) as exc:
                raise NotSerializable(
                    f"run {rec.run_id} returned a value that is not JSON: {exc}", field="result"
                ) from exc
        except asyncio.CancelledError:
            if st.cancel_requested:
                return  # cancel_run recorded it
            raise  # the actor sleeps or the engine stops: resume on the next wake
        except Exception as exc:
            if st.cancel_requested:
                return
            failures: list[str] = []
            if not isinstance(exc, HistoryDivergedError):
                failures = await wf.run_rollbacks()
            extra: dict[str, Any] = {"rollback_failures": failures} if failures else {}
            error = error_dict(exc, **extra)
            log.warning(
                "run %s of actor %s %s failed: %s", rec.run_id, inst.name, list(inst.key), exc
            )
            await queues.finish(st, "failed", error=error)
            return
        if not st.cancel_requested:
            await queues.finish(st, "completed", result=output)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("run %s of actor %s could not be recorded", rec.run_id, inst.actor_id)
    finally:
        inst.active_fibers -= 1
        queues._ended(st)
        inst.check_idle()
