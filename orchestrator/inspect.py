"""A read-only view of a store: actors, workflow histories, queues and stats.

The server, the CLI and the host read the engine through this instead of its
internals. It works on a live engine (``engine.inspector``, which adds what only a
running process knows: awake actors, subscribers, steps running right now) and on a
database opened without starting an engine::

    async with await Inspector.open("agentvm.db") as inspector:
        for info in await inspector.list_actors(workflow_status="failed"):
            print(info.name, info.key, (await inspector.history(info.actor_id)).error)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from .errors import ActorNotFound, InvalidRequest, RunNotFound
from .keys import KeyLike, normalize_key
from .storage.base import ActorRecord, HistoryRecord, Store

if TYPE_CHECKING:
    from .definitions import Registry
    from .records import RunDetail, RunInfo


# --- models ------------------------------------------------------------------------------


class ActorInfo(BaseModel):
    actor_id: str
    name: str
    key: list[str]
    created_at: float
    awake: bool
    workflow_status: str | None = None


class HistoryEntry(BaseModel):
    path: str
    kind: str
    status: str
    attempts: int
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: Any = None
    meta: Any = None


class WorkflowHistory(BaseModel):
    actor_id: str
    name: str
    key: list[str]
    is_workflow: bool
    workflow_status: str | None = None
    output: Any = None
    error: Any = None
    entries: list[HistoryEntry]


class QueuedMessage(BaseModel):
    message_id: int
    queue: str
    body: Any
    created_at: float
    in_flight: bool


class ActorDescription(BaseModel):
    """One actor at a glance. ``awake`` and ``subscribers`` are only known to a live
    engine (None on a store opened without one)."""

    actor_id: str
    name: str
    key: list[str]
    created_at: float
    awake: bool | None
    subscribers: int | None
    is_workflow: bool
    workflow_status: str | None = None
    queue_pending: int
    queue_in_flight: int
    history_entries: int
    entries_by_status: dict[str, int]
    running_steps: list[str]


class StoreStats(BaseModel):
    """Counts over the whole store (and the live engine, when there is one)."""

    actors_by_name: dict[str, int]
    workflows_by_status: dict[str, int]
    awake: int | None = None
    awake_by_name: dict[str, int] | None = None
    subscribers: int | None = None


# --- what a live engine adds ----------------------------------------------------------------


@dataclass(slots=True)
class LiveActor:
    """A snapshot of an awake actor, taken by the engine for the inspector."""

    record: ActorRecord
    subscribers: int
    pending: int
    leased: set[int]
    running_steps: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class LiveStats:
    """What is in memory now, by actor type (a cheap, synchronous read for gauges)."""

    awake_by_name: dict[str, int] = field(default_factory=dict)
    pending_by_name: dict[str, int] = field(default_factory=dict)
    in_flight_by_name: dict[str, int] = field(default_factory=dict)
    subscribers: int = 0

    @property
    def awake(self) -> int:
        return sum(self.awake_by_name.values())


class LiveView(Protocol):
    """The read-only part of a running engine the inspector uses."""

    def live_actor(self, actor_id: str) -> LiveActor | None: ...

    def live_stats(self) -> LiveStats: ...


# --- helpers ------------------------------------------------------------------------------


def _loads(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def received_completable(history: list[HistoryRecord]) -> set[int]:
    """Ids of completable messages a workflow has received (recorded) but may not
    have completed yet: they are leased to it, not pending."""
    ids: set[int] = set()
    for h in history:
        if h.kind == "message" and h.status == "completed" and h.output:
            for m in json.loads(h.output):
                if m.get("completable"):
                    ids.add(m["id"])
    return ids


def _entry(h: HistoryRecord) -> HistoryEntry:
    return HistoryEntry(
        path=h.path,
        kind=h.kind,
        status=h.status,
        attempts=h.attempts,
        started_at=h.started_at,
        finished_at=h.finished_at,
        output=_loads(h.output),
        error=_loads(h.error),
        meta=_loads(h.meta),
    )


# --- the inspector ------------------------------------------------------------------------


class Inspector:
    """Read-only queries over ``store``; ``live`` (a running engine) adds in-memory facts.
    ``registry`` tells workflows from plain actors when a type's outcome is unset."""

    def __init__(
        self, store: Store, *, live: LiveView | None = None, registry: Registry | None = None
    ) -> None:
        self._store = store
        self._live = live
        self._registry = registry
        self._owned = False

    @classmethod
    async def open(cls, db: str) -> Inspector:
        """An inspector over the store at ``db`` (a SQLite file or a PostgreSQL URL),
        without an engine; close it (or use ``async with``) when done."""
        from .storage import open_store

        store = open_store(db)
        await store.open()
        inspector = cls(store)
        inspector._owned = True
        return inspector

    async def close(self) -> None:
        """Close the store if :meth:`open` opened it (a live engine's stays open)."""
        if self._owned:
            self._owned = False
            await self._store.close()

    async def __aenter__(self) -> Inspector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_live(self) -> bool:
        return self._live is not None

    # -- actors --

    def _live_actor(self, actor_id: str) -> LiveActor | None:
        return self._live.live_actor(actor_id) if self._live is not None else None

    async def _record(self, actor_id: str) -> ActorRecord:
        live = self._live_actor(actor_id)
        if live is not None:
            return live.record
        rec = await self._store.get_actor(actor_id)
        if rec is None:
            raise ActorNotFound(f"no actor with id {actor_id!r}", actor_id=actor_id)
        return rec

    def _info(self, rec: ActorRecord) -> ActorInfo:
        return ActorInfo(
            actor_id=rec.actor_id,
            name=rec.name,
            key=list(rec.key),
            created_at=rec.created_at,
            awake=self._live_actor(rec.actor_id) is not None,
            workflow_status=rec.workflow_status,
        )

    async def find_actor(self, name: str, key: KeyLike) -> ActorInfo | None:
        """The actor ``(name, key)``, or None."""
        rec = await self._store.find_actor(name, normalize_key(key))
        return self._info(rec) if rec is not None else None

    async def get_actor(self, actor_id: str) -> ActorInfo:
        return self._info(await self._record(actor_id))

    async def list_actors(
        self, name: str | None = None, *, workflow_status: str | None = None
    ) -> list[ActorInfo]:
        """Actors (of type ``name``), optionally only those whose main workflow has
        ``workflow_status`` (``running``, ``completed``, ``failed``, ...)."""
        recs = await self._store.list_actors(name)
        return [
            self._info(r)
            for r in recs
            if workflow_status is None or r.workflow_status == workflow_status
        ]

    async def states(self, name: str | None = None) -> dict[str, Any]:
        """``{actor_id: last committed state}`` of every actor (of type ``name``)."""
        return {
            r.actor_id: json.loads(r.state or "null") for r in await self._store.list_actors(name)
        }

    async def get_state(self, actor_id: str) -> Any:
        """The actor's last committed state."""
        return json.loads((await self._record(actor_id)).state)

    # -- workflow and queue --

    async def history(self, actor_id: str) -> WorkflowHistory:
        """The workflow history of an actor, steps running now included."""
        rec = await self._record(actor_id)
        # The outcome is read before the entries: the live record may change while
        # the entries load, and "completed" must never come with older entries.
        status, output, error = rec.workflow_status, rec.workflow_output, rec.workflow_error
        definition = self._registry.get(rec.name) if self._registry is not None else None
        # Inspecting works even for a type this process does not run.
        is_workflow = definition.is_workflow if definition is not None else status is not None
        entries = [_entry(h) for h in await self._store.load_history(actor_id)]
        live = self._live_actor(actor_id)
        if live is not None:
            known = {e.path for e in entries}
            for path, started in live.running_steps.items():
                if path not in known:
                    entries.append(
                        HistoryEntry(
                            path=path, kind="step", status="running", attempts=0, started_at=started
                        )
                    )
        return WorkflowHistory(
            actor_id=actor_id,
            name=rec.name,
            key=list(rec.key),
            is_workflow=is_workflow,
            workflow_status=status,
            output=_loads(output),
            error=_loads(error),
            entries=entries,
        )

    async def queue_contents(self, actor_id: str) -> list[QueuedMessage]:
        """Messages not yet completed; ``in_flight`` ones are received by a handler."""
        await self._record(actor_id)
        live = self._live_actor(actor_id)
        if live is not None:
            leased = live.leased
        else:
            # Asleep (or no engine): a message its workflow received is in flight.
            leased = received_completable(await self._store.load_history(actor_id))
        return [
            QueuedMessage(
                message_id=m.message_id,
                queue=m.queue,
                body=json.loads(m.body),
                created_at=m.created_at,
                in_flight=m.message_id in leased,
            )
            for m in await self._store.load_messages(actor_id)
        ]

    async def describe_actor(self, actor_id: str) -> ActorDescription:
        """Liveness, workflow status, queue depth and step counts of one actor."""
        rec = await self._record(actor_id)
        history = await self.history(actor_id)
        messages = await self.queue_contents(actor_id)
        live = self._live_actor(actor_id)
        in_flight = sum(1 for m in messages if m.in_flight)
        return ActorDescription(
            actor_id=actor_id,
            name=rec.name,
            key=list(rec.key),
            created_at=rec.created_at,
            awake=(live is not None) if self._live is not None else None,
            subscribers=(live.subscribers if live is not None else 0)
            if self._live is not None
            else None,
            is_workflow=history.is_workflow,
            workflow_status=history.workflow_status,
            queue_pending=len(messages) - in_flight,
            queue_in_flight=in_flight,
            history_entries=len(history.entries),
            entries_by_status=dict(Counter(e.status for e in history.entries)),
            running_steps=[e.path for e in history.entries if e.status == "running"],
        )

    # -- runs --

    async def list_runs(
        self, actor_id: str | None = None, *, status: str | None = None, name: str | None = None
    ) -> list[RunInfo]:
        """Runs (messages of ``queue(run=...)`` queues), newest first: of one actor or
        across actors, by ``status`` and actor type ``name``."""
        from ._run_ops import RUN_STATUSES
        from .records import run_info  # records imports this module

        if status is not None and status not in RUN_STATUSES:
            raise InvalidRequest(
                f"unknown run status {status!r}; one of {', '.join(RUN_STATUSES)}",
                field="status",
                allowed=list(RUN_STATUSES),
            )
        if actor_id is not None:
            await self._record(actor_id)  # ActorNotFound for an unknown actor
        recs = await self._store.list_runs(actor_id, status=status, name=name)
        return [run_info(r) for r in recs]

    async def get_run(self, actor_id: str, run_id: int) -> RunDetail:
        """A run with its input, result or error, and its recorded history."""
        from .records import run_detail

        if isinstance(run_id, bool) or not isinstance(run_id, int) or run_id < 1:
            raise InvalidRequest(f"a run id is a positive integer, not {run_id!r}", field="run_id")
        rec = await self._store.get_run(actor_id, run_id)
        if rec is None:
            raise RunNotFound(f"no run {run_id} on actor {actor_id}", run_id=run_id)
        return run_detail(rec, await self._store.load_run_history(actor_id, run_id))

    # -- cluster --

    async def hosts(self, ttl: float) -> list[Any]:
        """The hosts sharing the store (``HostRecord``s; ``alive`` judged with ``ttl``),
        or ``[]`` on a store without leases (SQLite: one host)."""
        if not self._store.supports_leases:
            return []
        return list(await self._store.list_hosts(ttl))  # type: ignore[attr-defined]

    async def lease_of(self, actor_id: str) -> Any:
        """The lease on ``actor_id`` (``LeaseInfo``), or None (no lease, or a store
        without leases)."""
        if not self._store.supports_leases:
            return None
        return await self._store.lease_of(actor_id)  # type: ignore[attr-defined]

    async def committed_state(self, actor_id: str) -> tuple[str, Any] | None:
        """``(type name, last committed state)`` of an actor as the store has it (not
        the live instance's), or None when there is no such actor."""
        rec = await self._store.get_actor(actor_id)
        if rec is None:
            return None
        return rec.name, _loads(rec.state)

    # -- stats --

    def live_stats(self) -> LiveStats:
        """In-memory counts of the live engine (empty without one); synchronous, for
        scrape-time gauges."""
        return self._live.live_stats() if self._live is not None else LiveStats()

    async def stats(self) -> StoreStats:
        """Actors by type and workflows by status (the store), plus live counts."""
        recs = await self._store.list_actors(None)
        by_name = Counter(r.name for r in recs)
        by_status = Counter(r.workflow_status for r in recs if r.workflow_status is not None)
        out = StoreStats(actors_by_name=dict(by_name), workflows_by_status=dict(by_status))
        if self._live is not None:
            live = self._live.live_stats()
            out.awake = live.awake
            out.awake_by_name = dict(live.awake_by_name)
            out.subscribers = live.subscribers
        return out


__all__ = [
    "ActorDescription",
    "ActorInfo",
    "HistoryEntry",
    "Inspector",
    "LiveActor",
    "LiveStats",
    "LiveView",
    "QueuedMessage",
    "StoreStats",
    "WorkflowHistory",
    "received_completable",
]
