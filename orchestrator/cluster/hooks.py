"""The engine's cluster hooks, kept out of ``engine.py``: start-up recovery of what this
host can claim, waking claimed orphans, and dropping an actor whose lease was lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import ActorNotFound, ClusterError, EngineStopped, LeaseLost, NotOwner
from ..storage import base
from .member import ClusterMember, default_cluster_host_id

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("agentvm.cluster")


def cluster_mode(engine: Engine) -> bool:
    return bool(getattr(engine.store, "supports_leases", False))


async def start_cluster(engine: Engine) -> ClusterMember:
    """Join the cluster and recover (wake, or re-arm the alarm of) what this host
    could claim; the beat starts afterwards."""
    cfg = engine.config
    member = ClusterMember(
        engine,
        host_id=cfg.host_id or default_cluster_host_id(),
        ttl=cfg.lease_ttl,
        url=cfg.host_url,
    )
    engine.cluster = member
    _watch_refusals(engine, member)
    claimed = await member.start()
    await recover(engine, claimed, arm=False)
    return member


def _watch_refusals(engine: Engine, member: ClusterMember) -> None:
    """A commit the store refused (``LeaseLost``: fenced) drops the actor at once
    instead of at the next beat."""

    def refused(actor_id: Any) -> None:
        if isinstance(actor_id, str) and (actor_id in member.held or actor_id in engine.instances):
            log.warning(
                "write refused for actor %s: host %s no longer holds its lease (fenced)",
                actor_id,
                member.host_id,
            )
            engine._spawn(member.lost(actor_id))

    store: Any = engine.store
    if getattr(store, "on_lease_lost", False) is None:  # the store has the hook
        store.on_lease_lost = refused
        return
    submit = store.submit

    def check(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and isinstance(fut.exception(), LeaseLost):
            refused(fut.exception().metadata.get("actor_id"))  # type: ignore[union-attr]

    def watched(ops: list[Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = submit(ops)
        fut.add_done_callback(check)
        return fut

    # Awaited submissions (steps, actions, sleeps) go through submit().
    store.submit = watched


async def recover(engine: Engine, actor_ids: list[str], *, arm: bool = True) -> None:
    """Wake the claimed actors that are awake (or whose alarm is due); arm the alarm
    of the sleeping ones. Their lease stays held either way."""
    if not actor_ids:
        return
    snaps = await engine.store.load_snapshots(actor_ids)
    now = time.time()
    member = engine.cluster
    for actor_id in actor_ids:
        snap = snaps.get(actor_id)
        if snap is None:  # destroyed meanwhile
            if member is not None:
                await member.release(actor_id)
            continue
        rec = snap.record
        if actor_id in engine.instances:
            continue
        engine._ids[(rec.name, rec.key)] = actor_id
        if not rec.sleeping or (rec.alarm_at is not None and rec.alarm_at <= now):
            async with engine._lock(actor_id):
                if actor_id in engine.instances:
                    continue
                try:
                    await engine._wake(snap)
                except (LeaseLost, NotOwner):
                    await _drop(engine, actor_id)
                except Exception:
                    log.exception("waking claimed actor %s failed", actor_id)
        elif rec.alarm_at is not None:
            engine._set_alarm(actor_id, rec.alarm_at)
        elif member is not None:
            await member.release(actor_id)  # asleep with nothing to do: no owner
    if not arm:
        return  # at start-up the engine arms every schedule next
    # Schedules the dead owner had armed (created after this host started).
    for sched in await engine.store.load_schedules():
        if sched.actor_id in snaps:
            arm_missing(engine, [sched])


def arm_missing(engine: Engine, schedules: list[Any]) -> None:
    """Arm the schedules this host has no timer for. Every host arms every schedule;
    the actor's owner fires it (a non-owner's fire meets ``NotOwner`` and stops), and
    a sleeping actor's schedule is fired by whichever host claims the actor first."""
    for sched in schedules:
        if sched.schedule_id not in engine._schedule_timers:
            engine.arm_schedule(sched)


async def _drop(engine: Engine, actor_id: str) -> None:
    if engine.cluster is not None:
        engine.cluster._forget(actor_id)
    await drop_local(engine, actor_id)


async def drop_local(engine: Engine, actor_id: str) -> None:
    """Stop an actor here without writing anything: its new owner runs it."""
    alarm = engine._alarms.pop(actor_id, None)
    if alarm is not None:
        alarm.cancel()
    for sid, (aid, handle) in list(engine._schedule_timers.items()):
        if aid == actor_id:
            handle.cancel()
            del engine._schedule_timers[sid]
    inst = engine.instances.pop(actor_id, None)
    if inst is None:
        return
    if engine._ids.get((inst.name, inst.key)) == actor_id:
        # Its new owner may destroy it: the next resolve here re-reads the store.
        del engine._ids[(inst.name, inst.key)]
    inst.alive = False
    inst._busy()
    with contextlib.suppress(Exception):
        await inst.stop_run()
    ids = [m.message_id for m in list(inst.pending) + list(inst.leased.values())]
    for mid in ids + list(inst.runs.runs):
        fut = engine._waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                LeaseLost(f"actor {actor_id} moved to another host", actor_id=actor_id)
            )
    for sub in list(inst.subscribers):
        with contextlib.suppress(Exception):
            await sub.close()


async def fire_schedule(engine: Engine, rec: Any) -> None:
    """Fire a schedule if this host owns (or can claim) its actor and nobody fired it
    meanwhile: at most one fire in flight per schedule here, and the row re-read after
    the claim (a claim waits for the previous owner's last commit)."""
    member = engine.cluster
    assert member is not None
    if rec.schedule_id in member.firing:
        return
    member.firing.add(rec.schedule_id)
    try:
        try:
            inst = await engine.instance(rec.actor_id)
        except ActorNotFound:
            engine.store.submit_nowait([(base.DELETE_SCHEDULE, rec.schedule_id)])
            return
        except (EngineStopped, ClusterError):
            return  # another host owns the actor and fires it
        scheds = await engine.store.load_schedules(rec.actor_id)
        if not any(s.schedule_id == rec.schedule_id for s in scheds):
            return
        drop = [(base.DELETE_SCHEDULE, rec.schedule_id)]
        try:
            # Deleting the schedule commits with the action: at-least-once.
            await inst.call_action(rec.action, json.loads(rec.args), extra_ops=drop)
        except Exception:
            log.exception("scheduled action %s of actor %s failed", rec.action, rec.actor_id)
    finally:
        member.firing.discard(rec.schedule_id)


async def stop_cluster(engine: Engine) -> None:
    member = engine.cluster
    if member is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(engine.store.flush(), max(member.ttl, 1.0))
    await member.stop()
