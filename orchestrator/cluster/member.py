"""This host's membership in the cluster: heartbeat, leases, takeover, placement.

See the package docstring (``orchestrator/cluster/__init__.py``) for the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, NotOwner
from . import context

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("agentvm.cluster")


class OwnerMoving(ClusterError):
    """A forwarded request met ``NotOwner`` again (the actor is changing hands):
    retry after a second. Never forwarded twice, so requests cannot loop."""

    code = "owner_moving"
    http_status = 503


def default_cluster_host_id() -> str:
    """A host id unique to this process: ``<hostname>-<8 hex>``. Set
    ``AGENTVM_HOST_ID`` to a stable value to have a restarted host re-own its leases
    at once instead of after the ttl."""
    name = socket.gethostname().split(".")[0] or "host"
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _rss_mib() -> float:
    """This process's peak RSS in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return _rss_mib()


class ClusterMember:
    """Runs next to the engine when its store supports leases (PostgreSQL)."""

    # Orphans one host claims per beat: several live hosts share a dead one's actors.
    claim_per_beat = 100
    # Every this many beats, arm the schedules this host has no timer for.
    schedule_resync_beats = 30
    # Remote owners remembered (for a third of the ttl) to forward without a query.
    owner_cache_size = 10_000

    def __init__(self, engine: Engine, *, host_id: str, ttl: float, url: str | None) -> None:
        self.engine = engine
        self.store: Any = engine.store
        self.host_id = host_id
        self.ttl = ttl
        self.url = url or ""
        # The API token this host's server requires; sent when forwarding a call.
        self.api_token: str | None = None
        self.engine_id = ""
        # actor id → fencing token of every lease this host holds.
        self.held: dict[str, int] = {}
        self.hosts: list[Any] = []
        self.load_sources: list[Callable[[], dict[str, Any]]] = []
        # Before a claim: ``await prefer(actor_id)`` names a live host the actor belongs
        # on instead (a vm whose container is on that host's Docker engine:
        # host/vm/takeover.py), or None. Then the claim raises NotOwner naming it.
        self.affinity: list[Callable[[str], Awaitable[Any]]] = []
        # owner URL → HTTP transport for in-process calls forwarded there (forwarding.py).
        self.remotes: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_renewed = time.monotonic()
        self._beats = 0
        # Schedules being fired here (a re-armed timer must not fire one twice).
        self.firing: set[int] = set()
        # actor id → (owner host id, its URL, monotonic deadline) of actors owned elsewhere.
        self._owners: dict[str, tuple[str, str, float]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Heartbeat, then claim this host's old leases (same host id, restarted) and
        up to a beat's worth of orphans; returns their ids (the engine wakes them)."""
        await self._heartbeat()
        ours = await self.store.renew_leases(self.host_id, self.ttl)
        claimed = [a for a in ours if await self._try_claim(a)]
        claimed += await self._claim_orphans()
        self.hosts = await self.store.list_hosts(self.ttl)
        return claimed

    def run(self) -> None:
        """Start the beat (after the engine recovered what :meth:`start` claimed)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="agentvm-cluster-beat")

    async def stop(self) -> None:
        """Clean stop: the engine flushed its writes; give every lease up at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.store.host_stopped(self.host_id)
        except Exception:
            log.warning("could not mark host %s stopped", self.host_id, exc_info=True)
        for actor_id in list(self.held):
            self._forget(actor_id)
        from .forwarding import close_transports

        await close_transports(self)

    def serving(self, url: str, token: str | None = None) -> None:
        """The HTTP server listens: other hosts reach this one at ``url`` (unless
        ``AGENTVM_HOST_URL`` says otherwise)."""
        if not self.url:
            self.url = url.replace("://0.0.0.0:", "://127.0.0.1:").replace(
                "://[::]:", "://127.0.0.1:"
            )
            if self.url != url or "://127." in url or "://[::1]" in url:
                log.warning(
                    "other hosts will forward requests to %s: set AGENTVM_HOST_URL to an "
                    "address they can reach when they run on other machines",
                    self.url,
                )
        self.api_token = token
        if self._task is not None:
            self.engine._spawn(self._quiet(self._heartbeat()))

    # -- the beat ----------------------------------------------------------------------

    async def _loop(self) -> None:
        interval = max(self.ttl / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("cluster beat failed", exc_info=True)
                if time.monotonic() - self._last_renewed > self.ttl:
                    # Our leases have expired for everyone else: stop acting on them.
                    for actor_id in list(self.held):
                        await self.lost(actor_id)

    async def beat(self) -> None:
        """Heartbeat, renew, drop lost leases, claim and wake orphans."""
        if not self.engine.running:
            return  # stopping: take nothing new over
        await self._heartbeat()
        before = dict(self.held)
        still = await self.store.renew_leases(self.host_id, self.ttl)
        self._last_renewed = time.monotonic()
        for actor_id, token in before.items():
            if actor_id not in still and self.held.get(actor_id) == token:
                await self.lost(actor_id)
        self.hosts = await self.store.list_hosts(self.ttl)
        claimed = await self._claim_orphans()
        if claimed:
            from .hooks import recover

            await recover(self.engine, claimed)
        self._beats += 1
        if self._beats % self.schedule_resync_beats == 0:
            # Schedules other hosts created since this one started (their host may die).
            from .hooks import arm_missing

            arm_missing(self.engine, await self.store.load_schedules())

    async def _heartbeat(self) -> None:
        await self.store.heartbeat(self.host_id, self.url, self.engine_id, self.load())

    def load(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "actors": len(self.engine.instances),
            "sandboxes": 0,
            "rss_mib": _current_rss_mib(),
        }
        for source in self.load_sources:
            with contextlib.suppress(Exception):
                out.update(source())
        return out

    async def _claim_orphans(self) -> list[str]:
        orphans = await self.store.orphaned_actors(self.ttl, limit=self.claim_per_beat * 4)
        if not orphans:
            return []
        random.shuffle(orphans)
        # This host's share (the live hosts beat at different instants): a dead host's
        # actors spread over the survivors; the rest are claimed at the next beats.
        live = max(1, sum(1 for h in self.hosts if h.alive))
        share = min(self.claim_per_beat, max(10, -(-len(orphans) // live)))
        claimed: list[str] = []
        for rec in orphans:
            if len(claimed) >= share:
                break
            if rec.name not in self.engine.registry:
                continue
            if await self._try_claim(rec.actor_id):
                claimed.append(rec.actor_id)
        return claimed

    async def _try_claim(self, actor_id: str) -> bool:
        try:
            await self.claim(actor_id)
        except NotOwner:
            return False
        return True

    async def _quiet(self, coro: Any) -> None:
        try:
            await coro
        except Exception:
            log.warning("cluster heartbeat failed", exc_info=True)

    # -- leases ------------------------------------------------------------------------

    def _owner_error(self, actor_id: str, host_id: str, url: str | None) -> NotOwner:
        return NotOwner(
            f"actor {actor_id} is owned by host {host_id}"
            + (f" at {url}" if url else " (address unknown)"),
            actor_id=actor_id,
            owner_host_id=host_id,
            owner_url=url,
        )

    def knows(self, actor_id: str) -> bool:
        """A cached id of ``actor_id`` may be used without re-reading the store: this
        host holds its lease, or saw its live owner within the last third of the ttl
        (forwarded requests then skip a query; a call by id goes to the owner)."""
        if actor_id in self.held or actor_id in self.engine.instances:
            return True
        cached = self._owners.get(actor_id)
        return cached is not None and time.monotonic() < cached[2]

    def forget_owner(self, actor_id: str) -> None:
        """The cached owner did not answer: ask the database next time."""
        self._owners.pop(actor_id, None)

    async def claim(self, actor_id: str) -> None:
        """Own ``actor_id`` (before waking or creating it); :class:`NotOwner` if a
        live host holds it."""
        cached = self._owners.get(actor_id)
        if cached is not None:
            # Forwarded requests for a busy remote actor: no lease query each time.
            if time.monotonic() < cached[2]:
                raise self._owner_error(actor_id, cached[0], cached[1])
            del self._owners[actor_id]
        for prefer in self.affinity:
            host = await prefer(actor_id)
            if host is not None and host.host_id != self.host_id and actor_id not in self.held:
                raise NotOwner(
                    f"actor {actor_id} belongs on host {host.host_id} at {host.url}",
                    actor_id=actor_id,
                    owner_host_id=host.host_id,
                    owner_url=host.url,
                )
        res = await self.store.acquire_lease(actor_id, self.host_id, self.ttl)
        if not res.acquired:
            self._forget(actor_id)
            url = res.owner_url or None
            if url:
                if len(self._owners) >= self.owner_cache_size:
                    self._owners.clear()  # bounded; rebuilt from the next requests
                # A third of the ttl: the owner cannot lose the lease much sooner unnoticed.
                until = time.monotonic() + self.ttl / 3
                self._owners[actor_id] = (res.owner_host_id, url, until)
            raise self._owner_error(actor_id, res.owner_host_id, url)
        self._owners.pop(actor_id, None)
        self.held[actor_id] = res.token
        self.store.fence(actor_id, res.token)

    async def commit_created(self, actor_id: str, ops: list[Any]) -> None:
        """Commit a new actor's row under a lease claimed for it; a refused or failed
        commit gives the lease up (nothing names the actor: no cached id is left)."""
        await self.claim(actor_id)
        try:
            await self.store.submit(ops)
        except BaseException:
            await self.release(actor_id)
            raise

    async def release(self, actor_id: str) -> None:
        """Give the lease up (the actor went to sleep without an alarm, or was
        destroyed): the next request on any host claims it."""
        token = self.held.get(actor_id)
        self._forget(actor_id)
        if token is not None:
            try:
                await self.store.release_lease(actor_id, self.host_id, token)
            except Exception:
                log.warning("could not release the lease of %s", actor_id, exc_info=True)

    def _forget(self, actor_id: str) -> None:
        if self.held.pop(actor_id, None) is not None:
            self.store.unfence(actor_id)

    async def lost(self, actor_id: str) -> None:
        """Another host owns ``actor_id`` now: drop it here without writing."""
        log.warning("lease of actor %s lost; dropping it on host %s", actor_id, self.host_id)
        self._forget(actor_id)
        from .hooks import drop_local

        await drop_local(self.engine, actor_id)

    # -- placement ---------------------------------------------------------------------

    def place(self) -> Any | None:
        """The live host an actor created by an HTTP request should live on, when it
        is not this one (fewest running sandboxes, then awake actors, then RSS)."""
        if not context.http_request():
            return None
        live = [h for h in self.hosts if h.alive and h.url]
        if len(live) < 2:
            return None

        def weight(h: Any) -> tuple[float, float, float, str]:
            load = h.load if isinstance(h.load, dict) else {}
            if h.host_id == self.host_id:
                load = self.load()  # ours is fresher than the last beat's
            return (
                float(load.get("sandboxes", 0) or 0),
                float(load.get("actors", 0) or 0),
                float(load.get("rss_mib", 0) or 0),
                h.host_id,
            )

        best = min(live, key=weight)
        ours = [h for h in live if h.host_id == self.host_id]
        if best.host_id == self.host_id or (ours and weight(ours[0])[:2] <= weight(best)[:2]):
            return None
        return best

    def check_placement(self, name: str, key: Any) -> None:
        """Raise :class:`NotOwner` naming the host a new actor belongs on, if not here."""
        placed = self.placed_elsewhere(name, key)
        if placed is not None:
            raise placed

    def placed_elsewhere(self, name: str, key: Any) -> NotOwner | None:
        """``NotOwner`` naming the host a new actor belongs on, or None for here."""
        host = self.place()
        if host is None:
            return None
        if isinstance(host.load, dict):
            # Until its next heartbeat: a burst of creates spreads instead of piling up.
            host.load["actors"] = int(host.load.get("actors", 0) or 0) + 1
        return NotOwner(
            f"new actor {name!r} {list(key)!r} is placed on host {host.host_id}",
            actor_id=None,
            owner_host_id=host.host_id,
            owner_url=host.url,
            placement=True,
        )
