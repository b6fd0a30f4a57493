"""The engine's read-only views and run operations, kept out of ``engine.py`` (module
size): the inspector's live data, broadcast and subscription closing, and the runs
API (the operations themselves are in ``_run_ops.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from . import _run_ops
from .inspect import (
    ActorInfo,
    Inspector,
    LiveActor,
    LiveStats,
    QueuedMessage,
    WorkflowHistory,
)
from .records import RunDetail, RunInfo

if TYPE_CHECKING:
    from ._instance import ActorInstance
    from .engine import Engine


class EngineViews:
    """Mixed into :class:`~orchestrator.engine.Engine`."""

    if TYPE_CHECKING:
        instances: dict[str, ActorInstance]
        inspector: Inspector

    def _engine(self) -> Engine:
        return cast("Engine", self)

    # -- inspection (delegates to the inspector) -----------------------------------------

    def live_actor(self, actor_id: str) -> LiveActor | None:
        """A snapshot of an awake actor for the inspector (None if it is asleep)."""
        inst = self.instances.get(actor_id)
        if inst is None:
            return None
        run = inst.workflow_run
        return LiveActor(
            record=inst.record,
            subscribers=len(inst.subscribers),
            pending=len(inst.pending),
            # A running run's message is in flight too.
            leased=set(inst.leased).union(*inst.runs.running.values()),
            running_steps=dict(run.running_steps) if run is not None else {},
        )

    def live_stats(self) -> LiveStats:
        """Awake actors, queue depths and subscribers by actor type (synchronous)."""
        out = LiveStats()
        for inst in list(self.instances.values()):
            name = inst.name
            out.awake_by_name[name] = out.awake_by_name.get(name, 0) + 1
            out.pending_by_name[name] = out.pending_by_name.get(name, 0) + len(inst.pending)
            out.in_flight_by_name[name] = out.in_flight_by_name.get(name, 0) + len(inst.leased)
            out.subscribers += len(inst.subscribers)
        return out

    def broadcast(self, actor_id: str, event: str, payload: Any = None) -> bool:
        """Send an engine-originated event to an awake actor's subscribers (it is not
        woken: nobody listens to a sleeping actor). False if it is asleep."""
        inst = self.instances.get(actor_id)
        if inst is None:
            return False
        inst.broadcast_internal(event, payload)
        return True

    async def close_subscriptions(self) -> None:
        """End every broadcast subscription (open SSE/WebSocket streams finish)."""
        for inst in list(self.instances.values()):
            for sub in list(inst.subscribers):
                await sub.close()

    async def list_actors(
        self, name: str | None = None, *, workflow_status: str | None = None
    ) -> list[ActorInfo]:
        return await self.inspector.list_actors(name, workflow_status=workflow_status)

    async def get_state(self, actor_id: str) -> Any:
        inst = self.instances.get(actor_id)
        if inst is not None:
            return json.loads(inst._persisted_state)
        return await self.inspector.get_state(actor_id)

    async def history(self, actor_id: str) -> WorkflowHistory:
        """The workflow history of an actor, as the inspector shows it."""
        return await self.inspector.history(actor_id)

    async def queue_contents(self, actor_id: str) -> list[QueuedMessage]:
        return await self.inspector.queue_contents(actor_id)

    # -- runs (orchestrator/runs.py; the operations are in _run_ops.py) ---------------------

    async def list_runs(
        self, actor_id: str | None = None, *, status: str | None = None, name: str | None = None
    ) -> list[RunInfo]:
        """Runs, newest first: of one actor, or across actors (``status``, type ``name``)."""
        return await _run_ops.list_runs(self._engine(), actor_id, status=status, name=name)

    async def get_run(self, actor_id: str, run_id: int) -> RunDetail:
        """A run with its input, result or error, and its history."""
        return await _run_ops.get_run(self._engine(), actor_id, run_id)

    async def cancel_run(self, actor_id: str, run_id: int) -> RunInfo:
        """Cancel a queued or running run (the step in flight is interrupted)."""
        return await _run_ops.cancel_run(self._engine(), actor_id, run_id)

    async def retry_run(self, actor_id: str, run_id: int) -> RunInfo:
        """Run a failed or cancelled run again from the step that failed."""
        return await _run_ops.retry_run(self._engine(), actor_id, run_id)

    async def recover_workflow(self, actor_id: str) -> WorkflowHistory:
        """Re-run an actor's failed main workflow from the step that failed."""
        return await _run_ops.recover_workflow(self._engine(), actor_id)

    async def cancel_workflow(self, actor_id: str) -> WorkflowHistory:
        """Mark an actor's running or failed main workflow ``cancelled`` (and stop it)."""
        return await _run_ops.cancel_workflow(self._engine(), actor_id)
