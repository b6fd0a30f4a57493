"""What the built-in run handlers share: naming the run's vm in the run's meta, and
the final clean-up that destroys (or keeps, for a while) the vm a run made."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, Field

from ..contexts import ActorContext
from ..errors import ActorNotFound, InvalidRequest
from ..workflow import WorkflowContext

log = logging.getLogger("agentvm.builtin")

# Built-in queues run as many requests of one orchestrator key at once as the engine's
# default (AGENTVM_RUN_CONCURRENCY, 4 unless set); taskRunner is serial (1).
BUILTIN_CONCURRENCY: int | None = None
# Default of AGENTVM_KEEP_VM_HOURS: how long a vm kept with ``keep_vm`` lives.
DEFAULT_KEEP_VM_HOURS = 24.0
# The longest the final clean-up (destroying a vm) may hold a run's end up.
RELEASE_TIMEOUT = 120.0
# Set by a completed run's clean-up: the vm manager removes the destroyed vm's
# container and volume in the background instead of before destroy() returns.
REMOVE_IN_BACKGROUND: ContextVar[bool] = ContextVar("agentvm_remove_in_background", default=False)


class KeepVm(BaseModel):
    """The ``keep_vm`` field of a request whose run makes its own vm."""

    keep_vm: bool = Field(
        False,
        description="keep the run's vm after the run ends (it expires after "
        "AGENTVM_KEEP_VM_HOURS); default: destroyed when the run ends",
    )


async def note_vm(ctx: WorkflowContext, key: str) -> None:
    """``ctx.run_meta(vm=key)``: operators (``agentvm watch``) find the run's vm."""
    if getattr(ctx, "run_id", None) is None:  # not a run handler: nothing to record
        return
    result = ctx.run_meta(vm=key)
    if inspect.isawaitable(result):
        await result


async def release_vm(
    ctx: WorkflowContext,
    key: str,
    *,
    keep: bool,
    keep_hours: float,
    completed: bool = False,
) -> None:
    """The final clean-up of a run (called from its ``finally``): destroy the run's vm,
    or, with ``keep``, schedule its expiry after ``keep_hours``. Skipped while the
    engine stops (the run resumes after the restart and needs its vm). Not a step on
    purpose: it runs before the run's end is recorded, so a crash in between replays
    the run to here and it runs again (destroying is idempotent), and a retried run
    does not find a recorded clean-up to skip.

    ``completed`` (the handler returned a result): the vm actor is destroyed before
    the run's end as always, but its container and volume are removed in the
    background (:data:`REMOVE_IN_BACKGROUND`), so the answer does not wait for
    Docker (~0.3-0.5 s); if the host dies first, the orphan reaper removes them (no
    vm owns them any more). A failed or cancelled run waits for the removal."""
    if ctx.engine_stopping:
        return
    task = asyncio.ensure_future(
        _release(ctx, key, keep=keep, keep_hours=keep_hours, background=completed)
    )
    try:
        # Shielded: a cancelled run (this task is being cancelled) still cleans up.
        await asyncio.wait_for(asyncio.shield(task), RELEASE_TIMEOUT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the reaper and the vm's idle stop are the backstop
        log.warning("could not release vm %r of %s: %s", key, ctx.name, exc)


async def _release(
    ctx: ActorContext, key: str, *, keep: bool, keep_hours: float, background: bool = False
) -> None:
    if keep:
        await ctx.schedule.after(keep_hours * 3600, "expire_vm", key)
        return
    # This task's own context: the flag reaches the vm's on_destroy (in process) only.
    REMOVE_IN_BACKGROUND.set(background)
    with contextlib.suppress(ActorNotFound):
        await ctx.client().vm.get(key).destroy()


async def expire_vm(c: ActorContext, key: Any) -> bool:
    """Scheduled (``keep_vm``): destroy the vm ``key``; False if it was already gone."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest("key must be a non-empty string", field="key")
    try:
        await c.client().vm.get(key).destroy()
    except ActorNotFound:
        return False
    return True


def first_line(text: str, limit: int = 72) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line[:limit] or "agentvm fix"


__all__ = [
    "BUILTIN_CONCURRENCY",
    "DEFAULT_KEEP_VM_HOURS",
    "REMOVE_IN_BACKGROUND",
    "KeepVm",
    "expire_vm",
    "first_line",
    "note_vm",
    "release_vm",
]
