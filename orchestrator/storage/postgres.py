"""The shared store: PostgreSQL through asyncpg, for several hosts on one database.

Why asyncpg: its binary protocol and automatic prepared statements make it the
fastest Python driver, and the per-step commit cost is what a durable workflow pays.

Writes: every submission made while the previous commit is in flight (at least every
submission of one event-loop tick) is committed together (group commit), in
submission order, in **one round trip**: the batch is sent as one JSON document to
the ``agentvm_apply`` function (see :mod:`.postgres_schema`), which applies it in the
statement's own transaction. If the batch fails, each submission is retried alone so
a bad one fails alone, as in the SQLite store. Reads wait for the writes submitted
before them, so they see every earlier write, and then run on the connection pool.

Ids (message, schedule, history seq) are handed out synchronously from blocks of
1000 reserved with ``nextval`` (hi-lo), two blocks ahead, so they are unique across
hosts and increasing per host.

Leases and fencing (several hosts): see :meth:`acquire_lease` and :meth:`fence`; the
times in ``hosts`` and ``leases`` are the database's clock, never a host's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..errors import ActorAlreadyExists, LeaseLost, StorageFull
from . import base
from .base import (
    ActorRecord,
    HistoryRecord,
    LogRecord,
    MessageRecord,
    Op,
    RunRecord,
    ScheduleRecord,
    Store,
)
from .postgres_ids import _SEQUENCES, _Ids
from .postgres_leases import LeaseMethods
from .postgres_reads import ReadMethods
from .postgres_schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

log = logging.getLogger("agentvm.storage")

_NOW = "extract(epoch from clock_timestamp())::double precision"

# Which field of an op names its actor (for fencing): an index, or "record".
_ACTOR_AT_1 = {
    base.SET_STATE,
    base.SET_SLEEP,
    base.SET_WORKFLOW,
    base.DELETE_ACTOR,
    base.PUT_HISTORY,
    base.DELETE_HISTORY_TREE,
    base.CLEAR_HISTORY,
    base.PRUNE_RUN_HISTORY,
}
_ACTOR_IN_RECORD = {
    base.PUT_ACTOR,
    base.PUT_MESSAGE,
    base.PUT_SCHEDULE,
    base.APPEND_LOG,
    base.REPLACE_LOG,
    base.PUT_RUN,
}


def _encode(op: Op) -> list[Any]:
    """One op as a JSON array for ``agentvm_apply`` (field order as the function reads)."""
    code = op[0]
    if code == base.PUT_HISTORY:
        h: HistoryRecord = op[2]
        return [
            code,
            op[1],
            h.path,
            h.kind,
            h.status,
            h.attempts,
            h.started_at,
            h.finished_at,
            h.output,
            h.error,
            h.meta,
            h.seq,
        ]
    if code == base.PUT_MESSAGE:
        m: MessageRecord = op[1]
        return [code, m.message_id, m.actor_id, m.queue, m.body, m.created_at]
    if code == base.PUT_RUN:
        r: RunRecord = op[1]
        return [
            code,
            r.run_id,
            r.actor_id,
            r.queue,
            r.status,
            r.input,
            r.created_at,
            r.started_at,
            r.finished_at,
            r.result,
            r.error,
            r.meta,
        ]
    if code == base.PUT_ACTOR:
        a: ActorRecord = op[1]
        return [
            code,
            a.actor_id,
            a.name,
            json.dumps(list(a.key), separators=(",", ":")),
            a.state,
            a.input,
            a.created_at,
            bool(a.sleeping),
            a.alarm_at,
            a.workflow_status,
            a.workflow_output,
            a.workflow_error,
        ]
    if code == base.PUT_SCHEDULE:
        s: ScheduleRecord = op[1]
        return [code, s.schedule_id, s.actor_id, s.fire_at, s.action, s.args, s.created_at]
    if code in (base.APPEND_LOG, base.REPLACE_LOG):
        lg: LogRecord = op[1]
        return [code, lg.actor_id, lg.stream, lg.seq, lg.payload, lg.created_at]
    if code == base.SET_SLEEP:
        return [code, op[1], bool(op[2]), op[3]]
    return list(op)


def _actor_of(op: Op) -> str | None:
    code = op[0]
    if code in _ACTOR_AT_1:
        return str(op[1])
    if code in _ACTOR_IN_RECORD:
        return str(op[1].actor_id)
    return None


def _typed(exc: BaseException) -> BaseException:
    """Database errors a caller can act on, as the engine's typed errors."""
    state = getattr(exc, "sqlstate", None)
    if state == "53100":
        return StorageFull(f"the database's disk is full; nothing was written ({exc})")
    if state == "23505" and getattr(exc, "table_name", None) == "actors":
        return ActorAlreadyExists(f"the actor already exists; nothing was written ({exc})")
    return exc


_Write = tuple[list[Op], "asyncio.Future[None] | None"]


class PostgresStore(LeaseMethods, ReadMethods, Store):
    """A :class:`Store` on PostgreSQL; see the module docstring."""

    supports_leases = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._conn: asyncpg.Connection | None = None  # the writer's own connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Write] = []
        self._scheduled = False
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = {name: _Ids(self, seq) for name, seq in _SEQUENCES.items()}
        self._fences: dict[str, int] = {}
        # Called with the actor id of a submission refused because this host no longer
        # holds its lease (set by orchestrator/cluster: drop the actor at once, not at
        # the next beat; a fire-and-forget write has no future to carry the refusal).
        self.on_lease_lost: Callable[[str], None] | None = None
        self._closed = False

    # -- lifecycle

    async def open(self) -> None:
        import asyncpg

        self._loop = asyncio.get_running_loop()
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=self.pool_size, command_timeout=60
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await self._migrate(conn)
        self._conn = await asyncpg.connect(self.url, command_timeout=60)
        # Two blocks of each kind of id, in one round trip.
        seqs = [ids.sequence for ids in self._ids.values() for _ in range(2)]
        row = await self._pool.fetchrow("SELECT " + ", ".join(f"nextval('{seq}')" for seq in seqs))
        for ids, i in zip(self._ids.values(), range(0, len(seqs), 2), strict=True):
            ids.spare.extend((int(row[i]), int(row[i + 1])))

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        # Several hosts may start at once: one applies each migration, the others wait.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version int PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        have = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        if have > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database was written by a newer agentvm (schema {have} > {SCHEMA_VERSION})"
            )
        for version, sql in MIGRATIONS:
            if version <= have:
                continue
            await conn.execute(sql)
            await conn.execute(
                f"INSERT INTO schema_migrations (version, applied_at) VALUES ($1, {_NOW})",
                version,
            )
            log.info("applied PostgreSQL schema migration %d", version)

    async def close(self) -> None:
        if self._closed or self._pool is None:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._conn is not None:
                await self._conn.close()
            await self._pool.close()

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None, "store is not open"
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    # -- ids

    async def _nextval(self, sequence: str) -> int:
        assert self._pool is not None, "store is not open"
        return int(await self._pool.fetchval(f"SELECT nextval('{sequence}')"))

    def _nextval_blocking(self, sequence: str) -> int:
        # Rare (see _Ids.take): a short-lived connection on a thread, waited for here.
        import asyncpg

        out: list[int] = []
        error: list[BaseException] = []

        async def fetch() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                out.append(int(await conn.fetchval(f"SELECT nextval('{sequence}')")))
            finally:
                await conn.close()

        def run() -> None:
            try:
                asyncio.run(fetch())
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=run, name="pg-ids", daemon=True)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return out[0]

    def next_message_id(self) -> int:
        return self._ids["message_id"].take()

    def next_schedule_id(self) -> int:
        return self._ids["schedule_id"].take()

    def next_seq(self) -> int:
        return self._ids["seq"].take()

    # -- writes

    def submit(self, ops: list[Op]) -> asyncio.Future[None]:
        loop = self._loop
        assert loop is not None, "store is not open"
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((ops, fut))
        self._kick()
        return fut

    def submit_nowait(self, ops: list[Op]) -> None:
        assert self._loop is not None, "store is not open"
        self._pending.append((ops, None))
        self._kick()

    def _kick(self) -> None:
        # Start the writer at the end of this tick, so the tick's submissions group.
        if self._writer is None and not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._start_writer)

    def _start_writer(self) -> None:
        self._scheduled = False
        if self._writer is None and self._pending:
            assert self._loop is not None
            self._writer = self._loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._commit(batch)
                except Exception as exc:  # never leave a waiter hanging
                    # E.g. asyncpg's InternalClientError on a connection that died
                    # mid-protocol: start the next commit on a fresh connection.
                    log.exception("the PostgreSQL group commit failed")
                    self._drop_writer()
                    _fail(batch, exc)
        finally:
            self._writer = None
            if self._pending:  # cancelled mid-way: do not strand later submissions
                self._kick()

    async def flush(self) -> None:
        await self.submit([])

    def _payload(self, batch: list[_Write]) -> str:
        fences = self._fences
        subs = []
        for ops, _ in batch:
            fenced: list[list[Any]] = []
            if fences:
                seen: set[str] = set()
                for op in ops:
                    aid = _actor_of(op)
                    if aid is not None and aid in fences and aid not in seen:
                        seen.add(aid)
                        fenced.append([aid, fences[aid]])
            subs.append({"f": fenced, "o": [_encode(op) for op in ops]})
        return json.dumps(subs, separators=(",", ":"))

    def _drop_writer(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _writer_conn(self) -> asyncpg.Connection:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, command_timeout=60)
        return self._conn

    async def _commit(self, batch: list[_Write]) -> None:
        import asyncpg

        if all(not ops for ops, _ in batch):
            _resolve(batch, [])
            return
        conn: asyncpg.Connection | None = None
        try:
            conn = await self._writer_conn()
            lost = await conn.fetchval("SELECT agentvm_apply($1::jsonb)", self._payload(batch))
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            # The connection broke: whether the batch committed is unknown to us.
            self._drop_writer()
            _fail(batch, exc)
            return
        except (asyncpg.PostgresError, TypeError, ValueError) as exc:
            if conn is None:
                _fail(batch, exc)
                return
            # One submission is bad: commit each alone, so it fails alone.
            for one in batch:
                try:
                    lost = await conn.fetchval(
                        "SELECT agentvm_apply($1::jsonb)", self._payload([one])
                    )
                except Exception as exc:
                    fut = one[1]
                    if fut is not None and not fut.done():
                        fut.set_exception(_typed(exc))
                    else:
                        log.warning("a store write failed: %s", exc)
                    continue
                _resolve([one], lost, self._fences, self.on_lease_lost)
            return
        _resolve(batch, lost, self._fences, self.on_lease_lost)

    # -- fencing

    def fence(self, actor_id: str, token: int) -> None:
        """Writes for ``actor_id`` commit only while its lease row has ``token``."""
        self._fences[actor_id] = token

    def unfence(self, actor_id: str) -> None:
        self._fences.pop(actor_id, None)

    # -- reads

    async def _barrier(self) -> None:
        # A read sees every write submitted before it.
        if self._pending or self._writer is not None:
            await self.flush()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        await self._barrier()
        assert self._pool is not None, "store is not open"
        return list(await self._pool.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        await self._barrier()
        assert self._pool is not None, "store is not open"
        return await self._pool.fetchrow(sql, *args)

    async def _above_ids(self, snaps: Any) -> None:
        """After a takeover, this host's ids for an actor must sort after the previous
        owner's (history order, message and run order), so skip past them."""
        top = {"seq": 0, "message_id": 0}
        for snap in snaps:
            for h in snap.history:
                top["seq"] = max(top["seq"], h.seq)
            for hist in snap.run_history.values():
                for h in hist:
                    top["seq"] = max(top["seq"], h.seq)
            for m in snap.messages:
                top["message_id"] = max(top["message_id"], m.message_id)
            for r in snap.runs:
                top["message_id"] = max(top["message_id"], r.run_id)
        for name, value in top.items():
            if value:
                await self._ids[name].above(value)


def _fail(batch: list[_Write], exc: BaseException) -> None:
    for _, fut in batch:
        if fut is not None and not fut.done():
            fut.set_exception(exc)


def _resolve(
    batch: list[_Write],
    lost: list[int] | None,
    fenced: Any = (),
    on_lost: Callable[[str], None] | None = None,
) -> None:
    gone = set(lost or ())
    for i, (ops, fut) in enumerate(batch):
        if i in gone:
            touched = {a for op in ops if (a := _actor_of(op)) is not None}
            actors = sorted(touched & set(fenced) or touched)
            exc = LeaseLost(
                "this host no longer holds the lease of "
                + ", ".join(actors)
                + "; nothing of the write was applied",
                actor_id=actors[0] if actors else None,
            )
            if on_lost is not None:
                for actor_id in touched & set(fenced):
                    try:
                        on_lost(actor_id)
                    except Exception:  # the hook must not strand the other waiters
                        log.exception("on_lease_lost hook failed for %s", actor_id)
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            else:
                log.warning("%s", exc)
            continue
        if fut is not None and not fut.done():
            fut.set_result(None)
