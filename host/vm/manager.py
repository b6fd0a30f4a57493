"""Containers for vm actors: images, a warm pool, adoption, recreation and the reaper.

One :class:`SandboxManager` per host process. The vm actor (``host/vm/actor.py``)
owns the key → container mapping in its state; the manager only keeps what a
running process needs in memory (live handles, the pool, names being created).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests

from host.egress import EgressProxy, allow_from_labels, container_env, container_labels
from host.gateway import LLMGateway
from host.sandbox import (
    DockerBackend,
    DockerUnavailable,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    SandboxSpec,
)
from host.sandbox.docker_backend import engine_address
from host.sandbox.errors import VmLost
from orchestrator.builtin._runs import REMOVE_IN_BACKGROUND
from vm_images.builder import ensure_image

from .cold_pool import ColdPool
from .options import VmOptions
from .pool_agents import drop_pool_agents, start_pool_agents, wait_pool_agents
from .reaper import OrphanReaper

if TYPE_CHECKING:
    from orchestrator import ActorDefinition, Engine, Inspector

log = logging.getLogger("agentvm.vm")

# After a failed pool refill (e.g. Docker restarting), wait this long before retrying.
_REFILL_BACKOFF = 5.0
# close() waits this long for a pool container being created (or removed) to finish.
_CLOSE_DEADLINE = 60.0


# The manager attached to each engine: HTTP routes stream sandbox files through it.
_BY_ENGINE: weakref.WeakKeyDictionary[Any, SandboxManager] = weakref.WeakKeyDictionary()


def manager_of(engine: Engine) -> SandboxManager | None:
    """The sandbox manager attached to ``engine`` (None when it runs without one)."""
    return _BY_ENGINE.get(engine)


def _image_error(bundles: tuple[str, ...], exc: Exception) -> SandboxError:
    """Docker being unreachable names the engine; anything else is a build failure."""
    unreachable = isinstance(exc, requests.ConnectionError) or isinstance(
        exc.__context__, requests.ConnectionError
    )
    if unreachable:
        return DockerUnavailable(engine_address(), str(exc).splitlines()[0][:200])
    return SandboxError(f"building the sandbox image for bundles {list(bundles)}: {exc}")


@dataclass
class SandboxRecord:
    """What a vm actor stores about its container (JSON in its state). ``engine``: the
    id of the Docker engine it is on ("" in records made before hosts recorded it:
    taken to be this host's engine)."""

    name: str
    id: str
    volume: str
    image: str
    engine: str = ""

    def to_json(self) -> dict[str, str]:
        data = {"name": self.name, "id": self.id, "volume": self.volume, "image": self.image}
        if self.engine:
            data["engine"] = self.engine
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxRecord:
        return cls(
            name=data["name"],
            id=data["id"],
            volume=data["volume"],
            image=data["image"],
            engine=str(data.get("engine") or ""),
        )


@dataclass
class _Pool:
    """Started, unassigned containers for one set of container options."""

    options: VmOptions
    size: int
    ready: deque[tuple[Sandbox, str]] = field(default_factory=deque)
    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    added: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    creating: int = 0
    # The container creation in flight: shielded from the refill task's cancellation
    # (close() waits for it and removes what it made).
    inflight: asyncio.Future[Sandbox] | None = None


def _done_creating(pool: _Pool, _: object) -> None:
    pool.creating -= 1


class SandboxManager(OrphanReaper):
    """Hands containers to vm actors. Create with :meth:`open`; :meth:`attach` an
    engine to start the orphan reaper; :meth:`close` on shutdown."""

    def __init__(
        self,
        backend: DockerBackend,
        *,
        defaults: VmOptions,
        pool_size: int,
        pool_options: Sequence[VmOptions],
        reap_interval: float | None,
        gateway: LLMGateway | None = None,
        egress: EgressProxy | None = None,
        cold_pool: int = 0,
    ) -> None:
        self.backend = backend
        # Serves the LLM endpoint into every sandbox that goes live (None: no gateway).
        self.gateway = gateway
        # Serves the egress proxy into allowlist vms' sandboxes (docs/egress.md).
        self.egress = egress
        self.host_id = backend.host_id
        self.defaults = defaults
        self.pool_size = pool_size
        self.reap_interval = reap_interval
        self._images: dict[tuple[str, ...], str] = {}
        self._image_lock = asyncio.Lock()
        self._pools: dict[str, _Pool] = {}
        for opts in pool_options:
            if pool_size > 0:
                self._pools.setdefault(opts.container_key(), _Pool(opts, pool_size))
        # Created, not started containers: the tier behind the warm pool (cold_pool.py).
        self.cold = ColdPool(self, cold_pool, pool_options)
        # Container names handed to actors of this process (never reaped while known).
        self._claimed: dict[str, Sandbox] = {}
        # Container and volume names being created right now (the reaper skips them).
        self._creating: set[str] = set()
        self._inspector: Inspector | None = None
        # The attached engine's store and lease ttl: the reaper asks it which hosts
        # are dead (cluster mode; see reap()).
        self._lease_ttl = 10.0
        # The attached engine's database (put_blob reads the blob store next to it).
        self.db: str | None = None
        self._definitions: list[ActorDefinition] = []
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Removals of dead pool containers: awaited by close(), never cancelled.
        self._removals: set[asyncio.Future[None]] = set()

    @classmethod
    async def open(
        cls,
        *,
        host_id: str,
        pool_size: int = 2,
        defaults: VmOptions | None = None,
        pool_options: Sequence[VmOptions] | None = None,
        reap_interval: float | None = 300.0,
        control_root: Path | None = None,
        connect_timeout: float = 30.0,
        gateway: LLMGateway | None = None,
        egress: EgressProxy | None = None,
        disk_dir: Path | None = None,
        cold_pool: int = 0,
        docker_host: str | None = None,
    ) -> SandboxManager:
        """Connect to Docker (``DockerUnavailable`` naming the engine address if it is
        down) and start filling the warm pool (``pool_size`` containers for each of
        ``pool_options``, by default just the ``defaults``) in the background.
        ``docker_host``: the engine's address (default: ``DOCKER_HOST`` or local)."""
        backend = await DockerBackend.connect(
            host_id,
            docker_host=docker_host,
            control_root=control_root,
            connect_timeout=connect_timeout,
            disk_dir=disk_dir,  # None: /var/lib/agentvm/disks (host/sandbox/disk.py)
        )
        defaults = defaults or VmOptions()
        manager = cls(
            backend,
            defaults=defaults,
            pool_size=pool_size,
            pool_options=list(pool_options) if pool_options is not None else [defaults],
            reap_interval=reap_interval,
            gateway=gateway,
            egress=egress,
            cold_pool=cold_pool,
        )
        manager.cold.open()
        for pool in manager._pools.values():
            pool.wanted.set()
            pool.task = asyncio.create_task(manager._refill(pool), name="vm-pool-refill")
        return manager

    # -- wiring ------------------------------------------------------------------------

    def register(self, definition: ActorDefinition) -> None:
        """Called by ``vm_actor``: the reaper reads owners from actors of this type."""
        self._definitions.append(definition)

    def attach(self, engine: Engine) -> None:
        """Use ``engine``'s store to tell owned containers from orphans, and start the
        reaper: a pass right away, then every ``reap_interval`` seconds. Also wakes
        the vms with open sessions (their agents are re-attached at start-up)."""
        self._inspector = engine.inspector
        self.db = engine.config.db
        _BY_ENGINE[engine] = self
        self._lease_ttl = float(getattr(engine.config, "lease_ttl", 10.0))
        cluster = getattr(engine, "cluster", None)
        if cluster is not None:  # heartbeats name the engine this host drives
            from .takeover import engine_affinity

            cluster.engine_id = self.engine_id
            cluster.affinity.append(engine_affinity(self, engine))
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.create_task(self._reap_loop(), name="vm-reaper")
        if not self._closed:
            # vms with open sessions re-attach their agents now, not at the next call.
            from .sessions import wake_session_vms

            names = {d.name for d in self._definitions if d.name}
            self.background(wake_session_vms(engine, sorted(names)))

    async def close(self, *, remove_pool: bool = True) -> None:
        """Stop the reaper and the pool refills, remove the pool's containers, and stop
        listening for the others (vm containers keep running, for the next start)."""
        self._closed = True
        tasks = [t for t in [self._reaper, *(p.task for p in self._pools.values())] if t]
        tasks += list(self._tasks)  # process re-attachments still waiting
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Cancelling a container creation half-way leaks it: Docker's calls run in
        # threads that finish after the cancel (and after the clean-up that ran on
        # it), leaving a started pool container, its volume and its disk. So a refill
        # in flight is waited for (bounded) and what it made is removed below.
        for pool in self._pools.values():
            await self._settle_inflight(pool)
        await self.cold.close(remove=remove_pool)
        if self._removals:
            await asyncio.wait(list(self._removals), timeout=_CLOSE_DEADLINE)
        if remove_pool:
            await drop_pool_agents(sb for pool in self._pools.values() for sb, _ in pool.ready)
            for pool in self._pools.values():
                while pool.ready:
                    sandbox, _ = pool.ready.popleft()
                    with contextlib.suppress(SandboxError):
                        await self.backend.remove(sandbox)
        await self.backend.close()

    # -- images ------------------------------------------------------------------------

    async def image_for(self, bundles: Sequence[str]) -> str:
        """The image tag for a bundle set, built once (in a thread) and cached."""
        key = tuple(sorted(set(bundles)))
        tag = self._images.get(key)
        if tag is None:
            async with self._image_lock:
                tag = self._images.get(key)
                if tag is None:
                    try:
                        tag = await asyncio.to_thread(
                            ensure_image, list(key), client=self.backend.client
                        )
                    except (docker.errors.DockerException, requests.RequestException) as exc:
                        raise _image_error(key, exc) from exc
                    self._images[key] = tag
        return tag

    def _spec(self, options: VmOptions, image: str, key: Sequence[str], pool: str | None) -> Any:
        return SandboxSpec(
            image=image,
            key=list(key),
            pool=pool,
            network=options.docker_network(),
            limits=options.limits,
            env={**options.env, **container_env(options.egress_allow())},
            labels=container_labels(options.egress_allow()),
        )

    async def _egress_up(self, sandbox: Sandbox, labels: dict[str, str]) -> None:
        """Serve the egress proxy into an allowlist vm's sandbox that just went live."""
        allow = allow_from_labels(labels)
        if self.egress is not None and allow is not None:
            await self.egress.serve(
                sandbox.name, sandbox.control.control_dir, allow, container=sandbox.id
            )

    async def _egress_down(self, name: str) -> None:
        if self.egress is not None:
            await self.egress.stop(name)

    async def _create(
        self, spec: SandboxSpec, *, volume: str | None = None, claim: bool = True
    ) -> Sandbox:
        name = self.backend.new_name()
        marks = {name, volume or f"{name}-home"}
        self._creating |= marks
        try:
            sandbox = await self.backend.create(spec, name=name, volume=volume)
            await self._egress_up(sandbox, spec.labels)
            if claim:
                self._claimed[sandbox.name] = sandbox
            return sandbox
        finally:
            self._creating -= marks

    # -- the warm pool -------------------------------------------------------------------

    def vms_running(self) -> int:
        """Containers handed to vm actors of this process with a live connection."""
        return sum(1 for sandbox in list(self._claimed.values()) if sandbox.connected)

    def pool_creating(self) -> int:
        """Warm-pool containers being created right now (all pools)."""
        return sum(pool.creating for pool in self._pools.values())

    def pool_ready(self, options: VmOptions | None = None) -> int:
        """How many started containers wait in the pool for ``options`` (default: defaults)."""
        pool = self._pools.get((options or self.defaults).container_key())
        return len(pool.ready) if pool else 0

    async def wait_pool(self, options: VmOptions | None = None) -> None:
        """Wait until the pool for ``options`` (default: defaults) is full."""
        pool = self._pools.get((options or self.defaults).container_key())
        while pool is not None and len(pool.ready) < pool.size:
            pool.added.clear()
            await pool.added.wait()

    async def wait_pool_agents(self) -> None:
        """Until the agents pre-started in the pool's containers are initialized."""
        await wait_pool_agents(sb for pool in self._pools.values() for sb, _ in pool.ready)

    def pool_names(self) -> set[str]:
        return {sb.name for p in self._pools.values() for sb, _ in p.ready} | self.cold.names()

    async def _refill(self, pool: _Pool) -> None:
        """Keep ``pool.size`` started containers ready, one creation at a time."""
        while True:
            await pool.wanted.wait()
            pool.wanted.clear()
            while len(pool.ready) < pool.size and not self._closed:
                try:
                    image = await self.image_for(pool.options.bundles)
                    spec = self._spec(pool.options, image, [], pool.options.pool_id())
                    pool.creating += 1
                    create = pool.inflight = asyncio.ensure_future(self._create(spec, claim=False))
                    create.add_done_callback(functools.partial(_done_creating, pool))
                    # Shielded: see close(). A failed create cleans up after itself.
                    sandbox = await asyncio.shield(create)
                    pool.inflight = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("warm pool refill failed (retrying): %s", exc)
                    await asyncio.sleep(_REFILL_BACKOFF)
                    continue
                # Its agents start now, not once a vm takes it (pool_agents.py).
                start_pool_agents(sandbox, pool.options.bundles)
                pool.ready.append((sandbox, image))
                pool.added.set()
                # One agent start at a time (~1-3 s of CPU each): a drained pool must
                # not take both cores of a small host from the vms that drained it.
                await wait_pool_agents([sandbox])

    def _take(self, options: VmOptions) -> tuple[Sandbox, str] | None:
        pool = self._pools.get(options.container_key())
        if pool is None:
            return None
        taken = None
        while pool.ready and taken is None:
            sandbox, image = pool.ready.popleft()
            if sandbox.connected:
                taken = (sandbox, image)
            else:  # died while waiting in the pool
                self._remove_later(sandbox)
        pool.wanted.set()
        return taken

    def _remove_later(self, sandbox: Sandbox) -> None:
        """Remove a dead pool container in the background; close() waits for it."""

        async def remove() -> None:
            await drop_pool_agents([sandbox])
            with contextlib.suppress(SandboxError):
                await self.backend.remove(sandbox)
            await self._egress_down(sandbox.name)

        task = asyncio.ensure_future(remove())
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _settle_inflight(self, pool: _Pool) -> None:
        """Wait (bounded) for the pool's creation in flight and keep what it made in
        ``pool.ready``, for close() to remove."""
        create, pool.inflight = pool.inflight, None
        if create is None:
            return
        try:
            sandbox = await asyncio.wait_for(asyncio.shield(create), _CLOSE_DEADLINE)
        except TimeoutError:
            create.cancel()  # the backend's own clean-up is the last resort
            with contextlib.suppress(BaseException):
                await create
            return
        except Exception:
            return  # the failed create removed what it had made
        pool.ready.append((sandbox, ""))

    def background(self, coro: Any) -> None:
        """Run ``coro`` as a task of the manager (cancelled by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle of one vm's container ----------------------------------------------------

    @property
    def engine_id(self) -> str:
        """The Docker engine this host drives (``docker info`` -> ID)."""
        return self.backend.engine_id

    def here(self, record: SandboxRecord) -> bool:
        """Whether the vm's container is on this host's Docker engine (a record made
        before engines were recorded is taken to be)."""
        return not record.engine or record.engine == self.engine_id

    def _lost(self, record: SandboxRecord, key: Sequence[str], why: str) -> VmLost:
        return VmLost(
            f"vm {list(key)} is lost: {why}, and it was not re-created from a workspace "
            "checkpoint (it has none, or restoring it failed: see the host's log); "
            "destroy it and create it again",
            container=record.name,
            engine=record.engine,
            host_engine=self.engine_id,
        )

    async def home_lost(self, record: SandboxRecord) -> str | None:
        """Why the vm's ``/home/user`` cannot be reached from this host (None: it can):
        its container is on another Docker engine, or container and volume are gone."""
        if not self.here(record):
            return (
                f"its container {record.name} is on Docker engine {record.engine}, "
                f"which this host ({self.host_id}, engine {self.engine_id}) does not drive"
            )
        try:
            await self.backend.inspect(record.id)
            return None
        except SandboxNotFound:
            pass
        if await self.backend._volume_exists(record.volume):
            return None
        return f"its container {record.name} and its home volume {record.volume} are gone"

    async def acquire(
        self, key: Sequence[str], options: VmOptions
    ) -> tuple[Sandbox, SandboxRecord]:
        """A started container for a new vm: from the warm pool when its options
        match the pool's, else a created one of the cold tier started now, else new."""
        taken = self._take(options)
        if taken is not None:
            sandbox, image = taken
            self._claimed[sandbox.name] = sandbox
            # A pool container ran at the lowest CPU weight (docker_backend.py): raise
            # it, in the background (an engine round trip; the vm needs no CPU yet).
            self.background(self._normal_cpu(sandbox))
            return sandbox, self._record(sandbox, image)
        if (cold := await self.cold.acquire(options)) is not None:
            return cold[0], self._record(*cold)  # created earlier, started now
        image = await self.image_for(options.bundles)
        sandbox = await self._create(self._spec(options, image, key, None))
        return sandbox, self._record(sandbox, image)

    async def _normal_cpu(self, sandbox: Sandbox) -> None:
        try:
            await self.backend.set_cpu_shares(sandbox)
        except SandboxNotFound:
            pass  # already destroyed
        except SandboxError as exc:
            log.warning("could not raise the CPU weight of %s: %s", sandbox.name, exc)

    async def adopt(self, record: SandboxRecord) -> Sandbox | None:
        """Re-adopt a vm's container if it is running (after a host restart the
        supervisor dials in again); never starts or recreates it. None if it is not
        running or gone (or on another engine)."""
        if not self.here(record):
            return None
        try:
            info = await self.backend.inspect(record.id)
        except SandboxNotFound:
            return None
        if info.status != "running":
            return None
        sandbox = await self.backend.get(record.id)
        self._claimed[sandbox.name] = sandbox
        await self._egress_up(sandbox, info.labels)
        return sandbox

    async def resume(
        self, record: SandboxRecord, key: Sequence[str], options: VmOptions
    ) -> tuple[Sandbox, SandboxRecord]:
        """Bring a vm's container back: adopt it if running, start it if stopped, or
        recreate it on the same home volume if it is gone (``/home/user`` intact).
        ``VmLost`` if it is on another engine or its volume is gone too: a new volume
        would be an empty home (the vm actor's wake re-creates it from a checkpoint)."""
        if not self.here(record):
            raise self._lost(record, key, (await self.home_lost(record)) or "")
        try:
            sandbox = await self.backend.get(record.id)
        except SandboxNotFound:
            sandbox = None
        if sandbox is not None:
            self._claimed[sandbox.name] = sandbox
            await self._egress_up(sandbox, container_labels(options.egress_allow()))
            await sandbox.ensure_running()
            return sandbox, record
        self._claimed.pop(record.name, None)
        await self._forget(record.name)
        if not await self.backend._volume_exists(record.volume):
            raise self._lost(record, key, f"its container and home volume {record.volume} are gone")
        image = await self.image_for(options.bundles)
        sandbox = await self._create(self._spec(options, image, key, None), volume=record.volume)
        log.info("recreated vm %s on volume %s as %s", list(key), record.volume, sandbox.name)
        return sandbox, self._record(sandbox, image)

    async def _forget(self, name: str) -> None:
        """Drop the handle of a container that no longer exists (closes its socket)."""
        for sandbox in list(self.backend._sandboxes.values()):
            if sandbox.name == name:
                await self.backend.remove(sandbox, volume=False)
        await self._egress_down(name)

    async def stop(self, record: SandboxRecord) -> None:
        """Stop a vm's container (its volume is kept) and stop listening for it."""
        if not self.here(record):
            return
        try:
            sandbox = await self.backend.get(record.id)
        except SandboxNotFound:
            return
        await self.backend.stop(sandbox)
        await sandbox.control.close()
        await self._egress_down(sandbox.name)

    async def destroy(self, record: SandboxRecord | None, extra: Sandbox | None = None) -> None:
        """Remove a vm's container and its home volume (missing ones are fine)."""
        if extra is not None:
            self._claimed.pop(extra.name, None)
            await self.backend.remove(extra, volume=True)
            await self._egress_down(extra.name)
        if record is not None and not self.here(record):
            # On an engine this host does not drive: a live host there reaps it once
            # the vm is gone (reap()).
            self._claimed.pop(record.name, None)
        elif record is not None:
            self._claimed.pop(record.name, None)
            await self._egress_down(record.name)
            if REMOVE_IN_BACKGROUND.get():
                # A completed run's vm: its answer does not wait for Docker. close()
                # waits for it (bounded); the reaper removes it if the host dies first.
                task = asyncio.ensure_future(self._remove_record(record))
                self._removals.add(task)
                task.add_done_callback(self._removals.discard)
                return
            await self._remove_record(record)

    async def _remove_record(self, record: SandboxRecord) -> None:
        try:
            await self.backend.remove(record.id, volume=False)
            await self.backend.remove_volume(record.volume)
        except SandboxError as exc:
            if not REMOVE_IN_BACKGROUND.get():
                raise
            log.warning("could not remove the container of vm %s: %s", record.name, exc)

    async def status(self, record: SandboxRecord) -> str:
        """Docker's status of the container (``running``, ``exited``, ...; ``missing``;
        ``lost`` when it is on another engine)."""
        if not self.here(record):
            return "lost"
        try:
            return (await self.backend.inspect(record.id)).status
        except SandboxNotFound:
            return "missing"

    def _record(self, sandbox: Sandbox, image: str) -> SandboxRecord:
        return SandboxRecord(
            name=sandbox.name,
            id=sandbox.id,
            volume=sandbox.volume,
            image=image,
            engine=self.engine_id,
        )

    # -- in-process access for streaming -------------------------------------------------------

    @asynccontextmanager
    async def sandbox_for(
        self, engine: Engine, key: Sequence[str] | str, *, name: str = "vm", input: Any = None
    ) -> AsyncIterator[Sandbox]:
        """The live :class:`Sandbox` of vm ``key`` (created and started if needed), for
        in-process streaming (``read_file_stream``, ``write_file`` of an async iterable,
        ``download_tar``). The vm stays awake, so it is not idle-stopped, until the
        block exits::

            async with manager.sandbox_for(engine, ["fix-42"]) as sandbox:
                async for chunk in sandbox.read_file_stream("big.bin"): ...
        """
        handle = engine.client()[name].get_or_create(key, input=input)
        # A subscription keeps an actor awake; filter to an event that never fires.
        subscription = await handle.connect(["__agentvm_hold__"])
        try:
            info = await handle.call("start")
            yield self._claimed[info["container"]]
        finally:
            await subscription.close()
