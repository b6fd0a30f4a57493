"""The orphan reaper of :class:`~host.vm.manager.SandboxManager` (a mixin): removes the
containers and volumes no vm actor owns — this host's, and in a cluster those of dead
hosts on the same Docker engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from host.sandbox import DockerBackend, SandboxError, SandboxInfo, SandboxNotFound

if TYPE_CHECKING:
    from orchestrator import ActorDefinition, Inspector

log = logging.getLogger("agentvm.vm")


class OrphanReaper:
    """What :class:`SandboxManager` runs every ``reap_interval`` seconds."""

    backend: DockerBackend
    host_id: str
    reap_interval: float | None
    _inspector: Inspector | None
    _definitions: list[ActorDefinition]
    _claimed: dict[str, Any]
    _creating: set[str]
    _lease_ttl: float

    def pool_names(self) -> set[str]:
        raise NotImplementedError

    async def _reap_loop(self) -> None:
        while True:
            try:
                removed = await self.reap()
                if removed:
                    log.info("reaped orphan sandboxes: %s", removed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("orphan reaper pass failed: %s", exc)
            if self.reap_interval is None:
                return
            await asyncio.sleep(self.reap_interval)

    async def _owned(self) -> tuple[set[str], set[str]]:
        """Container ids/names and volumes recorded in vm actors' states."""
        containers: set[str] = set()
        volumes: set[str] = set()
        if self._inspector is None:
            return containers, volumes
        for type_name in {d.name for d in self._definitions if d.name}:
            for data in (await self._inspector.states(type_name)).values():
                sandbox = data.get("sandbox") if isinstance(data, dict) else None
                if isinstance(sandbox, dict):
                    containers.update(str(sandbox.get(k, "")) for k in ("name", "id"))
                    volumes.add(str(sandbox.get("volume", "")))
        return containers, volumes

    def _in_use_here(self, info: SandboxInfo) -> bool:
        return (
            info.name in self._claimed
            or info.name in self._creating
            or info.name in self.pool_names()
        )

    async def _dead_hosts(self) -> set[str]:
        """Host ids the cluster's store knows as dead (stopped, or no heartbeat within
        the lease ttl); empty on a single host (no leases in the store)."""
        if self._inspector is None:
            return set()
        hosts = await self._inspector.hosts(self._lease_ttl)
        return {h.host_id for h in hosts if not h.alive and h.host_id != self.host_id}

    async def reap(self) -> list[str]:
        """Remove this host's containers and volumes that no vm actor owns; returns
        their names. Skips the warm pool and containers being created. Needs
        :meth:`attach` (without a store nothing is known to be an orphan).

        In a cluster, containers on this engine of hosts that are dead go the same way
        when no vm actor owns them (the dead host's pool, a vm re-created elsewhere or
        destroyed since); the ones a vm still records stay, for a host on this engine
        to adopt."""
        if self._inspector is None:
            return []
        infos = await self.backend.list_sandboxes()
        volumes = await self.backend.list_volumes()
        dead = await self._dead_hosts()
        if dead:
            others = await self.backend.list_sandboxes(all_hosts=True)
            dead_infos = [i for i in others if i.host_id in dead]
            infos += dead_infos
            volumes = sorted({*volumes, *(i.volume for i in dead_infos if i.volume)})
        # Read owners after listing: anything created since is claimed or creating.
        owned, owned_volumes = await self._owned()
        removed: list[str] = []
        kept_volumes = set(owned_volumes) | self._creating
        for info in infos:
            if info.name in owned or info.id in owned or self._in_use_here(info):
                kept_volumes.add(info.volume)
                continue
            with contextlib.suppress(SandboxNotFound):
                await self.backend.remove(info.id, volume=False)
                removed.append(info.name)
        for volume in volumes:
            if volume in kept_volumes or volume in self._creating:
                continue
            try:
                await self.backend.remove_volume(volume)
                removed.append(volume)
            except SandboxError as exc:  # still mounted by a container created meanwhile
                log.debug("kept volume %s: %s", volume, exc)
        return removed
