"""The vm actor's lifecycle: its hooks (wake, sleep, destroy) and the ``info``,
``start``, ``stop`` and scheduled ``idle_stop`` actions."""

from __future__ import annotations

import logging
import time
from typing import Any

from host.sandbox import SandboxError
from orchestrator import ActorContext
from orchestrator.definitions import action

from .actions_base import (
    VmActionsBase,
    current_record,
    remember,
    sandbox_of,
    used,
    vm_options,
    vm_vars,
)
from .actions_exec import reattach
from .options import parse_options
from .sessions import detach_sessions, gateway_down, gateway_up, sessions_up, sleep_sessions
from .takeover import take_over

log = logging.getLogger("agentvm.vm")

# An idle timer that fires this close to the vm's idle deadline stops the container
# at once instead of arming another wake-up for the remainder.
IDLE_SLACK = 1.0


async def arm_idle_stop(c: ActorContext, when: float) -> None:
    old = c.state.get("idle_schedule")
    if old is not None:
        await c.schedule.cancel(old)
    c.state["idle_schedule"] = await c.schedule.at(when, "idle_stop")


class LifecycleActions(VmActionsBase):
    """Create-state, hooks, and starting/stopping the container."""

    def create_state(self, input: Any) -> dict[str, Any]:
        options = parse_options(input, self.defaults)
        return {"options": options.model_dump(mode="json"), "sandbox": None, "idle_schedule": None}

    # -- hooks --

    async def on_wake(self, c: ActorContext) -> None:
        record = current_record(c)
        if record is None:
            return  # created lazily by the first call
        manager = self.manager
        try:
            sandbox = await manager.adopt(record)
            # Not running here: on another engine (its host died with its machine) or
            # gone with its volume -> re-created from a checkpoint, or lost (takeover.py).
            why = None if sandbox is not None else await manager.home_lost(record)
        except SandboxError as exc:
            log.warning("could not adopt the container of vm %s: %s", list(c.key), exc)
            return
        v = vm_vars(c)
        if why is not None:
            if await take_over(c, manager, record, why):
                sandbox = v.sandbox
                assert sandbox is not None
                await gateway_up(c, manager.gateway, sandbox, c.state.get("token_budget"))
                await sessions_up(c, v.sessions, sandbox, vm_options(c).bundles, adopted=False)
            return
        c.state.pop("lost", None)
        v.sandbox = sandbox
        if sandbox is not None:
            await gateway_up(c, manager.gateway, sandbox, c.state.get("token_budget"))
            await sessions_up(c, v.sessions, sandbox, vm_options(c).bundles, adopted=True)
            manager.background(reattach(c, sandbox))

    async def on_sleep(self, c: ActorContext) -> None:
        v = vm_vars(c)
        for task in list(v.pumps.values()):
            task.cancel()  # the processes keep running in the sandbox
        await sleep_sessions(c, v.sessions)  # and so do the agents (pre-started kept)
        await gateway_down(c, self.manager.gateway, forget=False)
        record = current_record(c)
        if record is None:
            return
        remember(c, record)
        if v.sandbox is None:
            return  # not running during this wake
        options = vm_options(c)
        now = time.time()
        deadline = (v.last_used or 0.0) + options.idle_timeout
        if c.engine_stopping:
            # Host restart: leave it running for the next start to adopt, with a
            # durable wake-up to stop it if nobody uses it meanwhile.
            await arm_idle_stop(c, max(now, deadline))
            return
        if deadline - now > IDLE_SLACK:
            await arm_idle_stop(c, deadline)
            return
        async with v.lock:
            await self.manager.stop(record)
            v.sandbox = None

    async def on_destroy(self, c: ActorContext) -> None:
        v = vm_vars(c)
        for task in list(v.pumps.values()):
            task.cancel()
        await detach_sessions(v.sessions)
        await gateway_down(c, self.manager.gateway, forget=True)
        record = current_record(c)
        extra = v.sandbox if v.sandbox is not None and (
            record is None or v.sandbox.name != record.name
        ) else None  # fmt: skip
        await self.manager.destroy(record, extra)
        v.sandbox = None

    # -- actions --

    async def describe(self, c: ActorContext) -> dict[str, Any]:
        """What ``info`` answers (also returned by ``start`` and ``stop``)."""
        v = vm_vars(c)
        record = current_record(c)
        options = dict(c.state["options"])
        if record is None:
            return {
                "container": None,
                "container_id": None,
                "volume": None,
                "image": None,
                "running": False,
                "status": "none",
                "options": options,
            }
        if v.sandbox is not None and v.sandbox.connected and v.sandbox.name == record.name:
            status = "running"
        else:
            status = await self.manager.status(record)
        info = {
            "container": record.name,
            "container_id": record.id,
            "volume": record.volume,
            "image": record.image,
            "running": status == "running",
            "status": status,
            "options": options,
        }
        if c.state.get("lost"):  # why its actions raise VmLost (takeover.py)
            info["lost"] = c.state["lost"]
        return info

    @action
    async def idle_stop(self, c: ActorContext) -> None:
        """Scheduled: stop the container if the vm stayed idle for its idle_timeout."""
        v = vm_vars(c)
        c.state["idle_schedule"] = None
        if v.pumps or v.sandbox is None:
            return
        if v.last_used is not None and time.time() - v.last_used < (
            vm_options(c).idle_timeout - IDLE_SLACK
        ):
            return  # used since; on_sleep arms a new deadline
        record = current_record(c)
        if record is not None:
            async with v.lock:
                await self.manager.stop(record)
                v.sandbox = None

    @action
    async def info(self, c: ActorContext) -> dict[str, Any]:
        """``{container, container_id, volume, image, running, status, options}``
        without starting anything."""
        return await self.describe(c)

    @action
    @used
    async def start(self, c: ActorContext) -> dict[str, Any]:
        """Create or start the container now; returns :meth:`info`."""
        await sandbox_of(c)
        return await self.describe(c)

    @action
    async def stop(self, c: ActorContext) -> dict[str, Any]:
        """Stop the container now (``/home/user`` kept; the next call starts it)."""
        v = vm_vars(c)
        record = current_record(c)
        if record is not None:
            remember(c, record)
            async with v.lock:
                await self.manager.stop(record)
                v.sandbox = None
        return await self.describe(c)


__all__ = ["IDLE_SLACK", "LifecycleActions", "arm_idle_stop"]
