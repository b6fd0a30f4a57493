"""A vm whose host died, woken on another host (issue 14, docs/scale.md).

A vm lives where its container is: each host drives the Docker engine of its own
machine. When a vm actor wakes on a host that did not create its container:

- same Docker engine (the container is here): :meth:`SandboxManager.adopt` adopts it —
  the supervisor dials the control directory mounted into the container at creation
  (``DockerBackend._control_dir``), whichever host id made it;
- another engine, or container and home volume gone: :func:`take_over` re-creates the
  vm in a new container from its **newest workspace checkpoint** (checkpoints live in
  ``AGENTVM_CHECKPOINT_DIR``, storage every host reads);
- no checkpoint (or restoring it failed): the vm is **lost** — ``c.state["lost"]`` says
  why, its actions raise :class:`~host.sandbox.errors.VmLost` (410) from
  :meth:`SandboxManager.resume`; never an empty home. A later wake tries again (a
  checkpoint store that was unreachable may be back).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from orchestrator import ActorContext
from orchestrator.errors import AgentVMError

from .actions_base import remember, vm_options, vm_vars
from .manager import SandboxManager, SandboxRecord

log = logging.getLogger("agentvm.vm")

# A host of a vm's engine counts as there for this many lease ttls after its last
# heartbeat (engine_affinity).
_GRACE_TTLS = 3


async def _no_close(c: ActorContext, sid: str) -> None:
    """The sessions of a lost container have no agent left to close."""


def newest_checkpoint(state: dict[str, Any]) -> str | None:
    manifest: dict[str, dict[str, Any]] = state.get("checkpoints") or {}
    if not manifest:
        return None
    return max(manifest.values(), key=lambda e: float(e.get("created_at") or 0))["name"]


async def take_over(
    c: ActorContext, manager: SandboxManager, record: SandboxRecord, why: str
) -> bool:
    """Re-create the vm from its newest checkpoint in a new container on this host's
    engine; True when it was. Else marks it lost (``c.state["lost"]``) and returns
    False. The old container is left alone: a live host on its engine reaps it once
    no vm records it."""
    from .actions_checkpoints import CheckpointActions  # (it imports the manager)

    v = vm_vars(c)
    name = newest_checkpoint(c.state)
    if name is None:
        _mark_lost(c, record, f"{why}; the vm has no workspace checkpoint")
        return False
    restorer = CheckpointActions(manager, _no_close)
    try:
        restorer.store(c.actor_id).load_sidecar(name)  # readable here? (shared storage)
    except AgentVMError as exc:
        _mark_lost(c, record, f"{why}; its newest checkpoint {name!r}: {exc.message}")
        return False
    sandbox, new = await manager.acquire(list(c.key), vm_options(c))
    v.sandbox, v.record = sandbox, new
    try:
        await restorer.restore(c, name)
    except Exception as exc:
        v.sandbox, v.record = None, None
        with contextlib.suppress(Exception):
            await manager.destroy(new)
        _mark_lost(c, record, f"{why}; restoring checkpoint {name!r} failed: {exc}")
        log.warning("vm %s: restoring checkpoint %r failed: %s", list(c.key), name, exc)
        return False
    remember(c, new)
    c.state.pop("lost", None)
    c.state["taken_over"] = {
        "from_container": record.name,
        "from_engine": record.engine,
        "checkpoint": name,
        "at": time.time(),
    }
    log.info("vm %s re-created from checkpoint %r as %s (%s)", list(c.key), name, new.name, why)
    return True


def engine_affinity(manager: SandboxManager, engine: Any) -> Any:
    """A cluster member's affinity callback (``ClusterMember.affinity``): a vm whose
    container is on another Docker engine that a live host drives belongs on that
    host (it adopts the container there; here it could only be re-created from a
    checkpoint or lost). Costs nothing while every live host drives this engine."""
    names = {d.name for d in manager._definitions if d.name}

    async def prefer(actor_id: str) -> Any:
        cluster = engine.cluster
        mine = manager.engine_id
        # Lenient about "alive": a host of the vm's engine that missed a beat or two
        # (a loaded machine) still gets the vm; re-creating it elsewhere is final.
        # Heartbeats are database-clock times: the freshest one stands for "now".
        now = max((h.heartbeat_at for h in cluster.hosts), default=0.0)
        hosts = [
            h
            for h in cluster.hosts
            if h.url
            and h.engine_id
            and not h.stopped
            and (h.alive or h.heartbeat_at > now - _GRACE_TTLS * cluster.ttl)
        ]
        if not mine or all(h.engine_id == mine for h in hosts):
            return None
        found = await engine.inspector.committed_state(actor_id)
        if found is None or found[0] not in names:
            return None
        state = found[1]
        sandbox = (state.get("sandbox") or {}) if isinstance(state, dict) else {}
        where = sandbox.get("engine") if isinstance(sandbox, dict) else None
        if not where or where == mine:
            return None
        there = [h for h in hosts if h.engine_id == where]
        if not there:
            return None  # nobody drives it any more: re-created here, or lost
        lease = await engine.inspector.lease_of(actor_id)
        if lease is not None and lease.alive:
            return None  # a live owner has it: the claim names that one
        # The same choice on every host (no ping-pong between two of that engine), a
        # live one first.
        return min(there, key=lambda h: (not h.alive, h.host_id))

    return prefer


def _mark_lost(c: ActorContext, record: SandboxRecord, reason: str) -> None:
    log.warning("vm %s is lost: %s", list(c.key), reason)
    c.state["lost"] = {"reason": reason, "container": record.name, "engine": record.engine}


__all__ = ["engine_affinity", "newest_checkpoint", "take_over"]
