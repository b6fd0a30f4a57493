"""Runs a workflow function for one actor incarnation and records its outcome."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from ..errors import AgentVMError, HistoryDivergedError
from ..records import error_dict
from ..storage import base
from ..storage.base import HistoryRecord
from ._context import WorkflowContext, WorkflowRun, _dumps, _error_json

if TYPE_CHECKING:
    from .._instance import ActorInstance

log = logging.getLogger("agentvm.workflow")


async def drive_workflow(instance: ActorInstance, fn: Any, history: list[HistoryRecord]) -> None:
    run = WorkflowRun(instance, history)
    instance.workflow_run = run
    store = instance.store
    try:
        ctx = WorkflowContext(run, "")
        try:
            result = await fn(ctx)
            ctx._finish()
            output = _dumps(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures: list[str] = []
            if not isinstance(exc, HistoryDivergedError):
                failures = await run.run_rollbacks()
            extra: dict[str, Any] = {}
            if isinstance(exc, AgentVMError):
                extra = {"code": exc.code, "metadata": exc.metadata}
            if failures:
                extra["rollback_failures"] = failures
            error = _error_json(exc, **extra)
            instance.record.workflow_status = "failed"
            instance.record.workflow_error = error
            await store.submit([(base.SET_WORKFLOW, instance.actor_id, "failed", None, error)])
            log.warning(
                "workflow of actor %s %s failed: %s", instance.name, list(instance.key), exc
            )
            instance.broadcast_internal("workflow_failed", json.loads(error))
            # Senders waiting on messages this workflow received learn it now, not
            # when their wait runs out.
            failure = error_dict(exc)
            for message_id in list(instance.leased):
                instance.engine.finish_waiter(message_id, "failed", failure)
            return
        instance.record.workflow_status = "completed"
        instance.record.workflow_output = output
        await store.submit(
            [
                (base.SET_WORKFLOW, instance.actor_id, "completed", output, None),
                *instance.state_ops(),
            ]
        )
        instance.broadcast_internal("workflow_completed", json.loads(output))
    finally:
        instance.active_fibers -= 1
        instance.check_idle()
