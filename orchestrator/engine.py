"""The engine: owns the store, wakes and sleeps actors, fires timers and schedules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._engine_views import EngineViews
from ._instance import ActorInstance, Subscription
from ._tx import Tx, current_tx
from .config import EngineConfig
from .contexts import ActorContext
from .definitions import Registry
from .errors import (
    ActorAlreadyExists,
    ActorDestroyed,
    ActorNotFound,
    ClusterError,
    EngineStopped,
    InvalidRequest,
    NotSerializable,
    UnknownActorType,
)
from .inspect import ActorInfo, HistoryEntry, Inspector, QueuedMessage, WorkflowHistory
from .inspect import received_completable as _received_completable
from .keys import ActorKey, KeyLike, normalize_key
from .metrics import register_runs_gauge
from .queues import SendResult
from .storage import Store, base, open_store
from .storage.base import ActorRecord, ActorSnapshot, HistoryRecord, RunRecord, ScheduleRecord

if TYPE_CHECKING:
    from .client import Client
    from .cluster import ClusterMember

log = logging.getLogger("agentvm.engine")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Engine(EngineViews):
    """Runs the actors of a :class:`Registry` on a :class:`Store`.

    ``async with Engine(registry) as engine: client = engine.client()``.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        store: Store | None = None,
        config: EngineConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.registry = registry
        cfg = config or EngineConfig()
        if overrides:
            cfg = cfg.model_copy(update=overrides)
        self.config = cfg
        self.store: Store = store or open_store(
            cfg.db, synchronous=cfg.sqlite_synchronous, pool_size=cfg.pg_pool_size
        )
        self.instances: dict[str, ActorInstance] = {}
        self._ids: dict[tuple[str, ActorKey], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._schedule_timers: dict[int, tuple[str, asyncio.TimerHandle]] = {}
        self._alarms: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self._client: Client | None = None
        # Set by start() when the store holds leases (PostgreSQL): orchestrator/cluster.
        self.cluster: ClusterMember | None = None
        # The public, read-only view the server, CLI and host use (orchestrator/inspect.py).
        self.inspector = Inspector(self.store, live=self, registry=registry)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        self._running = True
        register_runs_gauge(self)
        if getattr(self.store, "supports_leases", False):
            from .cluster.hooks import start_cluster

            await start_cluster(self)  # recovers only what this host could claim
        now = time.time()
        recs = await self.store.actors_to_recover() if self.cluster is None else []
        wake_now: list[str] = []
        for rec in recs:
            if rec.name not in self.registry:
                log.warning("actor %s has unknown type %r; not recovered", rec.actor_id, rec.name)
                continue
            self._ids[(rec.name, rec.key)] = rec.actor_id
            if not rec.sleeping or (rec.alarm_at is not None and rec.alarm_at <= now):
                wake_now.append(rec.actor_id)
            elif rec.alarm_at is not None:
                self._set_alarm(rec.actor_id, rec.alarm_at)
        if wake_now:
            snaps = await self.store.load_snapshots(wake_now)
            for snap in snaps.values():
                await self._wake(snap)
        for sched in await self.store.load_schedules():
            self.arm_schedule(sched)
        if self.cluster is not None:
            self.cluster.run()

    @property
    def running(self) -> bool:
        return self._running

    async def stop(self) -> None:
        """Stop every actor; idle ones are put to sleep, busy ones recover on next start."""
        if not self._running:
            return
        self._running = False
        for handle in self._alarms.values():
            handle.cancel()
        self._alarms.clear()
        for _, handle in self._schedule_timers.values():
            handle.cancel()
        self._schedule_timers.clear()
        for inst in list(self.instances.values()):
            if not inst.alive:
                # Going to sleep: _sleep writes its record (with the alarm it read
                # before unwinding the waits; reading it here would find none).
                continue
            idle = inst.inflight == 0 and inst.active_fibers == 0
            # Read the timers before stop_run: cancelling the run unwinds the waits
            # that registered them, and a lost alarm means a durable sleep never fires.
            alarm = inst.next_alarm()
            inst.alive = False
            inst._busy()
            await inst.stop_run()
            with contextlib.suppress(Exception):
                await inst.run_hook(inst.definition.on_sleep)
            if idle:
                self.store.submit_nowait([(base.SET_SLEEP, inst.actor_id, True, alarm)])
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            # Let them unwind while the store is still open: a cancelled scheduled action's
            # error path still submits its writes, and a submit to a closed store never
            # resolves, which hung asyncio.run's teardown. Bounded: a task that ignores
            # its cancellation is left behind.
            await asyncio.wait(tasks, timeout=5.0)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(EngineStopped("the engine stopped"))
        self.instances.clear()
        if self.cluster is not None:
            from .cluster.hooks import stop_cluster

            await stop_cluster(self)  # commits what is pending, then gives the leases up
        await self.store.close()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def client(self) -> Client:
        """An in-process client: ``engine.client().counter.get_or_create("main")``."""
        if self._client is None:
            from .client import Client, InProcessTransport

            self._client = Client(InProcessTransport(self))
        return self._client

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _check_running(self) -> None:
        if not self._running:
            raise EngineStopped("the engine is not running")

    # -- resolving and creating --------------------------------------------------------

    def _definition(self, name: str) -> Any:
        definition = self.registry.get(name)
        if definition is None:
            raise UnknownActorType(
                f"no actor type named {name!r}", actor=name, known=sorted(self.registry.actors)
            )
        return definition

    async def resolve(
        self, name: str, key: KeyLike, *, create: bool = False, input: Any = None
    ) -> str:
        """The actor id for ``(name, key)``; creates the actor if ``create``."""
        self._check_running()
        self._definition(name)
        k = normalize_key(key)
        actor_id = self._cached_id(name, k)
        if actor_id is not None:
            return actor_id
        async with self._lock(f"key:{name}:{_dumps(list(k))}"):
            actor_id = self._cached_id(name, k)
            if actor_id is not None:
                return actor_id
            rec = await self.store.find_actor(name, k)
            if rec is not None:
                self._ids[(name, k)] = rec.actor_id
                return rec.actor_id
            if not create:
                raise ActorNotFound(
                    f"no actor {name!r} with key {list(k)!r}", actor=name, key=list(k)
                )
            return await self._create(name, k, input)

    async def create(self, name: str, key: KeyLike, *, input: Any = None) -> str:
        """Create a new actor; :class:`ActorAlreadyExists` if the key is taken."""
        self._check_running()
        self._definition(name)
        k = normalize_key(key)
        async with self._lock(f"key:{name}:{_dumps(list(k))}"):
            if self._cached_id(name, k) or await self.store.find_actor(name, k) is not None:
                raise ActorAlreadyExists(
                    f"actor {name!r} with key {list(k)!r} already exists", actor=name, key=list(k)
                )
            return await self._create(name, k, input)

    def _cached_id(self, name: str, key: ActorKey) -> str | None:
        """The cached id of ``(name, key)``. In a cluster, only one this host holds (or
        just saw owned elsewhere): another host may have destroyed an actor this host let
        go of (asleep, or its lease moved); a stale id would make calls ActorNotFound."""
        actor_id = self._ids.get((name, key))
        if actor_id is None or self.cluster is None or self.cluster.knows(actor_id):
            return actor_id
        return None  # re-read from the store

    def _forget_id(self, actor_id: str) -> None:
        """Drop every cached key naming ``actor_id`` (it is gone from the store)."""
        for k in [k for k, v in self._ids.items() if v == actor_id]:
            del self._ids[k]

    async def _create(self, name: str, key: ActorKey, input: Any) -> str:
        definition = self._definition(name)
        if self.cluster is not None:
            self.cluster.check_placement(name, key)  # HTTP creates go to the least loaded
        try:
            input_json = _dumps(input)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"actor input is not JSON: {exc}", field="input") from exc
        state = definition.initial_state(input)
        try:
            state_json = _dumps(state)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"initial state of {name!r} is not JSON: {exc}", field="state"
            ) from exc
        record = ActorRecord(
            actor_id=uuid.uuid4().hex,
            name=name,
            key=key,
            state=state_json,
            input=input_json,
            created_at=time.time(),
            sleeping=False,
            workflow_status="running" if definition.is_workflow else None,
        )
        inst = ActorInstance(self, definition, record)
        # on_create's changes commit together with the actor row: all or nothing.
        tx = Tx()
        token = current_tx.set(tx)
        try:
            if definition.on_create is not None:
                result = definition.on_create(ActorContext(inst), input)
                if asyncio.iscoroutine(result):
                    await result
        finally:
            current_tx.reset(token)
            tx.closed = True
        record.state = _dumps(inst.state)
        inst._persisted_state = record.state
        ops: list[base.Op] = [(base.PUT_ACTOR, record), *tx.ops]
        if self.cluster is not None:
            await self.cluster.commit_created(record.actor_id, ops)  # under a new lease
        else:
            await self.store.submit(ops)
        self._ids[(name, key)] = record.actor_id
        self.instances[record.actor_id] = inst
        tx.run_after()
        await self._start_instance(inst, [], [], {})
        return record.actor_id

    # -- waking and sleeping ---------------------------------------------------------------

    async def instance(self, actor_id: str) -> ActorInstance:
        """The awake instance of an actor, waking it if needed."""
        inst = self.instances.get(actor_id)
        if inst is not None and inst.alive:
            return inst
        self._check_running()
        async with self._lock(actor_id):
            inst = self.instances.get(actor_id)
            if inst is not None and inst.alive:
                return inst
            if self.cluster is not None:
                await self.cluster.claim(actor_id)  # NotOwner when a live host has it
            snaps = await self.store.load_snapshots([actor_id])
            snap = snaps.get(actor_id)
            if snap is None:
                self._forget_id(actor_id)
                if self.cluster is not None:
                    await self.cluster.release(actor_id)
                raise ActorNotFound(f"no actor with id {actor_id!r}", actor_id=actor_id)
            return await self._wake(snap)

    async def _wake(self, snap: ActorSnapshot) -> ActorInstance:
        rec = snap.record
        definition = self._definition(rec.name)
        inst = ActorInstance(self, definition, rec)
        # Completable messages recorded in workflow history are already received:
        # they are leased, not pending, or they would be delivered twice.
        leased = _received_completable(snap.history)
        runs = list(snap.runs)
        known = {r.run_id for r in runs}
        legacy: list[base.Op] = []
        for m in snap.messages:
            if m.queue in inst.runs:
                # A run's message: the runs table drives it. One sent before its queue
                # became a run queue gets its run row now.
                if m.message_id not in known:
                    run = inst.runs.new_run(m)
                    runs.append(run)
                    legacy.append((base.PUT_RUN, run))
            elif m.message_id in leased:
                inst.leased[m.message_id] = m
            else:
                inst.pending.append(m)
        if legacy:
            self.store.submit_nowait(legacy)
        self.instances[rec.actor_id] = inst
        self._ids[(rec.name, rec.key)] = rec.actor_id
        alarm = self._alarms.pop(rec.actor_id, None)
        if alarm is not None:
            alarm.cancel()
        if rec.sleeping or rec.alarm_at is not None:
            self.store.submit_nowait([(base.SET_SLEEP, rec.actor_id, False, None)])
        await self._start_instance(inst, snap.history, runs, snap.run_history)
        return inst

    async def _start_instance(
        self,
        inst: ActorInstance,
        history: list[Any],
        runs: list[RunRecord],
        run_history: dict[int, list[HistoryRecord]],
    ) -> None:
        inst.begin()
        try:
            await inst.run_hook(inst.definition.on_wake)
            inst.start_run(history, runs, run_history)
        finally:
            inst.end()

    def request_sleep(self, inst: ActorInstance) -> None:
        self._spawn(self._sleep(inst))

    async def _sleep(self, inst: ActorInstance) -> None:
        async with self._lock(inst.actor_id):
            if (
                not inst.alive
                or not inst.is_idle()
                or self.instances.get(inst.actor_id) is not inst
            ):
                return
            # Before stop_run, which unwinds the waits that registered the deadlines.
            alarm = inst.next_alarm()
            inst.alive = False
            await inst.stop_run()
            try:
                await inst.run_hook(inst.definition.on_sleep)
            except Exception:
                log.exception("on_sleep of actor %s failed", inst.actor_id)
            await self.store.submit([(base.SET_SLEEP, inst.actor_id, True, alarm)])
            del self.instances[inst.actor_id]
            if alarm is not None:
                self._set_alarm(inst.actor_id, alarm)
            elif self.cluster is not None:
                await self.cluster.release(inst.actor_id)  # asleep: owned by nobody

    def _set_alarm(self, actor_id: str, when: float) -> None:
        old = self._alarms.pop(actor_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, when - time.time())
        self._alarms[actor_id] = loop.call_later(delay, self._alarm_fired, actor_id)

    def _alarm_fired(self, actor_id: str) -> None:
        self._alarms.pop(actor_id, None)
        if self._running:
            self._spawn(self._wake_quietly(actor_id))

    async def _wake_quietly(self, actor_id: str) -> None:
        try:
            await self.instance(actor_id)
        except (ActorNotFound, EngineStopped, ClusterError):
            pass
        except Exception:
            log.exception("waking actor %s failed", actor_id)

    # -- schedules ---------------------------------------------------------------------------

    def arm_schedule(self, rec: ScheduleRecord) -> None:
        if not self._running:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, rec.fire_at - time.time())
        handle = loop.call_later(delay, lambda: self._spawn(self._fire_schedule(rec)))
        old = self._schedule_timers.get(rec.schedule_id)
        if old is not None:
            old[1].cancel()  # armed again (a cluster host re-arms on takeover): one timer
        self._schedule_timers[rec.schedule_id] = (rec.actor_id, handle)

    async def _fire_schedule(self, rec: ScheduleRecord) -> None:
        self._schedule_timers.pop(rec.schedule_id, None)
        if self.cluster is not None:
            from .cluster.hooks import fire_schedule

            await fire_schedule(self, rec)  # the owner fires it, once
            return
        drop = [(base.DELETE_SCHEDULE, rec.schedule_id)]
        try:
            inst = await self.instance(rec.actor_id)
        except ActorNotFound:
            self.store.submit_nowait(drop)
            return
        except EngineStopped:
            return
        try:
            # Deleting the schedule commits with the action: at-least-once.
            await inst.call_action(rec.action, json.loads(rec.args), extra_ops=drop)
        except Exception:
            log.exception("scheduled action %s of actor %s failed", rec.action, rec.actor_id)

    async def cancel_schedule(self, schedule_id: int) -> None:
        entry = self._schedule_timers.pop(schedule_id, None)
        if entry is not None:
            entry[1].cancel()
        await self.store.submit([(base.DELETE_SCHEDULE, schedule_id)])

    # -- actions, queues, subscriptions -------------------------------------------------------

    async def call(self, actor_id: str, action: str, args: list[Any] | tuple[Any, ...] = ()) -> Any:
        if not isinstance(action, str):
            raise InvalidRequest("action name must be a string", field="action")
        inst = await self.instance(actor_id)
        return await inst.call_action(action, args)

    async def send(
        self,
        actor_id: str,
        queue: str,
        body: Any = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> SendResult:
        """Durably enqueue ``body``; with ``wait`` return the consumer's response
        (``completed``), how its run ended (``failed`` with the error, ``cancelled``),
        or ``timed_out`` (the message stays queued)."""
        if not isinstance(queue, str):
            raise InvalidRequest("queue name must be a string", field="queue")
        if timeout is not None and timeout < 0:
            raise InvalidRequest("timeout must not be negative", field="timeout")
        inst = await self.instance(actor_id)
        inst.begin()
        try:
            rec = inst.make_message(queue, body)
            ops, run = inst.message_ops(rec)
            fut: asyncio.Future[Any] | None = None
            if wait:
                fut = asyncio.get_running_loop().create_future()
                self._waiters[rec.message_id] = fut
            try:
                await self.store.submit_await(ops)  # one loop iteration (sqlite.py)
            except BaseException:
                self._waiters.pop(rec.message_id, None)
                raise
            inst.accept(rec, run)
        finally:
            inst.end()
        if fut is None:
            return SendResult(status="queued", message_id=rec.message_id)
        try:
            status, payload = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return SendResult(status="timed_out", message_id=rec.message_id)
        finally:
            self._waiters.pop(rec.message_id, None)
        if status == "failed":
            return SendResult(status="failed", message_id=rec.message_id, error=payload)
        if status == "cancelled":
            return SendResult(status="cancelled", message_id=rec.message_id)
        return SendResult(status="completed", message_id=rec.message_id, response=payload)

    def resolve_waiter(self, message_id: int, response: Any) -> None:
        self.finish_waiter(message_id, "completed", response)

    def finish_waiter(self, message_id: int, status: str, payload: Any) -> None:
        """Answer a sender waiting on ``message_id``: ``completed`` (payload: the
        response), ``failed`` (payload: the error) or ``cancelled``."""
        fut = self._waiters.pop(message_id, None)
        if fut is not None and not fut.done():
            fut.set_result((status, payload))

    async def subscribe(
        self,
        actor_id: str,
        events: list[str] | None = None,
        *,
        max_bytes: int | None = None,
        max_events: int | None = None,
    ) -> Subscription:
        """Subscribe to broadcasts; the actor stays awake while subscribed. A subscriber
        more than ``max_events``/``max_bytes`` behind is dropped (see :class:`Subscription`)."""
        inst = await self.instance(actor_id)
        bounds: dict[str, int] = {}
        if max_bytes is not None:
            bounds["max_bytes"] = max_bytes
        if max_events is not None:
            bounds["max_events"] = max_events
        sub = Subscription(self, actor_id, set(events) if events else None, **bounds)
        inst.subscribers.add(sub)
        inst._busy()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        inst = self.instances.get(sub.actor_id)
        if inst is not None and sub in inst.subscribers:
            inst.subscribers.discard(sub)
            inst.check_idle()

    # -- destroy -------------------------------------------------------------------------

    def destroy_later(self, actor_id: str) -> None:
        self._spawn(self.destroy(actor_id))

    async def destroy(self, actor_id: str) -> None:
        """Run ``on_destroy``, stop the actor and delete everything it stored."""
        inst = await self.instance(actor_id)
        async with self._lock(actor_id):
            if not inst.alive:
                raise ActorNotFound(f"no actor with id {actor_id!r}", actor_id=actor_id)
            inst.alive = False
            inst._busy()
            await inst.stop_run()
            try:
                await inst.run_hook(inst.definition.on_destroy)
            except Exception:
                inst.alive = True
                inst.runs = type(inst.runs)(inst)
                snap = (await self.store.load_snapshots([actor_id]))[actor_id]
                inst.start_run(snap.history, snap.runs, snap.run_history)
                raise
            await self.store.submit([(base.DELETE_ACTOR, actor_id)])
            self.instances.pop(actor_id, None)
            if self.cluster is not None:
                await self.cluster.release(actor_id)
            self._ids.pop((inst.name, inst.key), None)
            for sid, (aid, handle) in list(self._schedule_timers.items()):
                if aid == actor_id:
                    handle.cancel()
                    del self._schedule_timers[sid]
            ids = [m.message_id for m in list(inst.pending) + list(inst.leased.values())]
            for mid in ids + list(inst.runs.runs):
                fut = self._waiters.pop(mid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ActorDestroyed(f"actor {actor_id} was destroyed"))
            for sub in list(inst.subscribers):
                await sub.close()


__all__ = ["ActorInfo", "Engine", "HistoryEntry", "QueuedMessage", "WorkflowHistory"]
