"""The storage interface the engine writes through.

The engine never speaks SQL. It reads whole records and submits *batches* of
logical operations; a backend commits each batch atomically and in submission
order. That ordering is the contract the workflow engine leans on: a write that
was submitted earlier is never lost while a later one survives, so a history
entry that does not need its own round trip (a queue receive, a loop iteration)
can ride along with the next step's commit.

SQLite is the embedded default (:mod:`orchestrator.storage.sqlite`); a
PostgreSQL backend for hosts sharing one database implements the same methods.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ActorRecord:
    actor_id: str
    name: str
    key: tuple[str, ...]
    state: str  # JSON text
    input: str  # JSON text
    created_at: float
    sleeping: bool = False
    alarm_at: float | None = None
    workflow_status: str | None = None  # None | running | completed | failed
    workflow_output: str | None = None
    workflow_error: str | None = None


@dataclass(slots=True)
class HistoryRecord:
    path: str
    kind: str
    status: str
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    output: str | None = None  # JSON text
    error: str | None = None  # JSON text
    meta: str | None = None  # JSON text
    seq: int = 0


@dataclass(slots=True)
class MessageRecord:
    message_id: int
    actor_id: str
    queue: str
    body: str  # JSON text
    created_at: float


@dataclass(slots=True)
class ScheduleRecord:
    schedule_id: int
    actor_id: str
    fire_at: float
    action: str
    args: str  # JSON text
    created_at: float


@dataclass(slots=True)
class RunRecord:
    """One run: a message on a queue whose handler is a per-message workflow.

    ``run_id`` is the message id. Its workflow history lives in ``workflow_history``
    under the path prefix ``~run/<run_id>/`` (see :func:`run_scope`).
    """

    run_id: int
    actor_id: str
    queue: str
    status: str  # queued | running | completed | failed | cancelled
    input: str  # JSON text
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: str | None = None  # JSON text
    error: str | None = None  # JSON text: {group, code, message, metadata}
    meta: str = "{}"  # JSON object text
    name: str = ""  # the actor's type; filled in by reads
    key: tuple[str, ...] = ()  # the actor's key; filled in by reads


RUN_FINISHED = ("completed", "failed", "cancelled")
RUN_PREFIX = "~run"


def run_scope(run_id: int) -> str:
    """The history scope of one run. Entry names never start with ``~``, so no main
    workflow entry can live under it."""
    return f"{RUN_PREFIX}/{run_id}"


def run_of_path(path: str) -> int | None:
    """The run id of a history path under ``~run/<id>/``, else None."""
    if not path.startswith(RUN_PREFIX + "/"):
        return None
    part = path.split("/", 2)[1]
    return int(part) if part.isdigit() else None


@dataclass(slots=True)
class LogRecord:
    """One numbered entry of an actor's append-only log (e.g. a session's updates)."""

    actor_id: str
    stream: str
    seq: int
    payload: str  # JSON text
    created_at: float


# --- operations --------------------------------------------------------------------
# Plain tuples keep the hot path cheap: (opcode, *fields).

PUT_ACTOR = "put_actor"  # (op, ActorRecord)
SET_STATE = "set_state"  # (op, actor_id, state_json)
SET_SLEEP = "set_sleep"  # (op, actor_id, sleeping: bool, alarm_at)
SET_WORKFLOW = "set_workflow"  # (op, actor_id, status, output_json, error_json)
DELETE_ACTOR = "delete_actor"  # (op, actor_id)
PUT_HISTORY = "put_history"  # (op, actor_id, HistoryRecord)
DELETE_HISTORY_TREE = "delete_history_tree"  # (op, actor_id, path) path and everything under it
CLEAR_HISTORY = "clear_history"  # (op, actor_id)
PUT_MESSAGE = "put_message"  # (op, MessageRecord)
DELETE_MESSAGE = "delete_message"  # (op, message_id)
PUT_SCHEDULE = "put_schedule"  # (op, ScheduleRecord)
DELETE_SCHEDULE = "delete_schedule"  # (op, schedule_id)
SET_META = "set_meta"  # (op, key, value)
APPEND_LOG = "append_log"  # (op, LogRecord)
# (op, LogRecord): every entry of that record's stream is replaced by it (compaction)
REPLACE_LOG = "replace_log"
PUT_RUN = "put_run"  # (op, RunRecord) insert or replace
PRUNE_RUN_HISTORY = "prune_run_history"  # (op, actor_id, keep) drop histories of old runs

Op = tuple[Any, ...]


@dataclass(slots=True)
class ActorSnapshot:
    """Everything needed to wake an actor."""

    record: ActorRecord
    history: list[HistoryRecord] = field(default_factory=list)  # the main workflow's
    messages: list[MessageRecord] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)  # unfinished, oldest first
    run_history: dict[int, list[HistoryRecord]] = field(default_factory=dict)


class Store(ABC):
    """Durable storage for actors, workflow history, queues and schedules."""

    # True for a store shared by several hosts (leases, fencing: PostgresStore).
    supports_leases: bool = False

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # -- writes
    @abstractmethod
    def submit(self, ops: list[Op]) -> asyncio.Future[None]:
        """Commit ``ops`` atomically after every earlier submission; await to be sure."""

    def submit_nowait(self, ops: list[Op]) -> None:
        """Like :meth:`submit` for callers that only need ordering, not the ack."""
        self.submit(ops)

    def submit_await(self, ops: list[Op]) -> Awaitable[None]:
        """Like :meth:`submit` for a caller that awaits the ack at once (a workflow
        step); a store may answer with something cheaper than a future."""
        return self.submit(ops)

    @abstractmethod
    async def flush(self) -> None:
        """Wait until everything submitted so far is committed."""

    @abstractmethod
    def next_message_id(self) -> int: ...

    @abstractmethod
    def next_schedule_id(self) -> int: ...

    @abstractmethod
    def next_seq(self) -> int: ...

    # -- reads
    @abstractmethod
    async def find_actor(self, name: str, key: tuple[str, ...]) -> ActorRecord | None: ...

    @abstractmethod
    async def get_actor(self, actor_id: str) -> ActorRecord | None: ...

    @abstractmethod
    async def list_actors(self, name: str | None = None) -> list[ActorRecord]: ...

    @abstractmethod
    async def load_snapshots(self, actor_ids: list[str]) -> dict[str, ActorSnapshot]:
        """Actor rows with their history and pending messages, for waking."""

    @abstractmethod
    async def load_history(self, actor_id: str) -> list[HistoryRecord]:
        """The main workflow's history entries (runs' entries excluded), oldest first."""

    @abstractmethod
    async def load_run_history(self, actor_id: str, run_id: int) -> list[HistoryRecord]:
        """The history entries of one run (paths under ``~run/<run_id>/``), oldest first."""

    @abstractmethod
    async def list_runs(
        self,
        actor_id: str | None = None,
        *,
        status: str | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first; filtered by actor, status and actor type."""

    @abstractmethod
    async def get_run(self, actor_id: str, run_id: int) -> RunRecord | None: ...

    @abstractmethod
    async def load_messages(self, actor_id: str) -> list[MessageRecord]: ...

    @abstractmethod
    async def load_schedules(self, actor_id: str | None = None) -> list[ScheduleRecord]: ...

    @abstractmethod
    async def read_log(
        self, actor_id: str, stream: str, since: int = 0, limit: int | None = None
    ) -> list[LogRecord]:
        """Entries of one log with ``seq > since``, oldest first."""

    @abstractmethod
    async def last_log_seq(self, actor_id: str, stream: str) -> int:
        """The highest ``seq`` of a log (0 when empty)."""

    @abstractmethod
    async def actors_to_recover(self) -> list[ActorRecord]:
        """Actors that were awake at shutdown or crash, or that have an alarm."""
