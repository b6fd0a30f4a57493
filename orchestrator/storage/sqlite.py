"""The embedded store: one SQLite file in WAL mode.

Why not one ``aiosqlite`` call per statement: a step commit is a handful of
statements plus ``COMMIT``, and paying a thread hop for each would dominate the
per-step cost. Every submission made during one event-loop tick is committed
together in one transaction (group commit). Where that commit runs depends on
``synchronous``:

* ``OFF`` / ``NORMAL`` (the default): a WAL commit writes to the page cache and
  never waits for the disk (~20 µs), less than the two thread wake-ups a hand-off
  costs, so it runs on the event loop itself, at the end of the tick. Reads — which
  may be large — run on a reader thread with its own connection, after the pending
  writes are committed, so they see every earlier write.
* ``FULL`` / ``EXTRA``: every commit waits for an fsync, which must not block the
  loop, so the batch is handed to the database thread (which also serves reads, in
  order) and one hop back resolves all its futures.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from ..errors import StorageFull
from . import base
from .base import (
    ActorRecord,
    ActorSnapshot,
    HistoryRecord,
    LogRecord,
    MessageRecord,
    Op,
    RunRecord,
    ScheduleRecord,
    Store,
)
from .sqlite_ops import (
    _ACTOR_COLS,
    _HISTORY_COLS,
    _NOT_RUN_PATH,
    _ONE_STATEMENT,
    _RUN_COLS,
    SCHEMA,
    SCHEMA_VERSION,
    _actor,
    _apply,
    _history,
    _message,
    _read_run_history,
    _run,
)

T = TypeVar("T")


class _Ack:
    """The ack :meth:`SQLiteStore.submit_await` hands out when commits run on the loop.

    ``call_soon`` is FIFO, so the hand-over that commits a submission always runs before
    a task that yielded after submitting it resumes. A bare ``yield`` (what
    ``asyncio.sleep(0)`` does) is thus enough to find the commit done: one loop
    iteration per step, where a future costs two (the hand-over resolves it, then the
    task's wake-up runs). Duck-typed like the future :func:`_resolve_all` and
    :func:`_resolve_each` resolve; a real future is made only if a resumption ever
    finds the commit not done.
    """

    __slots__ = ("_done", "_exc", "_fut")

    def __init__(self) -> None:
        self._done = False
        self._exc: BaseException | None = None
        self._fut: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, _value: None) -> None:
        self._done = True
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._exc = exc
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    def __await__(self) -> Generator[Any, None, None]:
        if not self._done:
            yield  # one loop iteration: the hand-over queued ahead of us commits
        if not self._done:
            self._fut = asyncio.get_running_loop().create_future()
            yield from self._fut.__await__()
        if self._exc is not None:
            raise self._exc


_Waiter: TypeAlias = "asyncio.Future[None] | _Ack"
_Write = tuple[list[Op], "_Waiter | None"]
_Read = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_STOP = object()


class SQLiteStore(Store):
    """SQLite in WAL mode, one file; see the module docstring for the threading."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Write] = []
        self._flush_scheduled = False
        # Ids are handed out here, not by SQLite, so a record can be referenced before
        # its commit. The reserved high-water mark is persisted ahead of use, so ids
        # never repeat, even after every message with a high id is gone.
        self._counters: dict[str, int] = {"message_id": 0, "schedule_id": 0, "seq": 0}
        self._reserved: dict[str, int] = {"message_id": 0, "schedule_id": 0, "seq": 0}
        self._closed = False
        # OFF/NORMAL: commit on the event loop (see the module docstring).
        self._inline = self.synchronous in ("OFF", "NORMAL")
        self._writer: sqlite3.Connection | None = None

    # -- lifecycle

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._inline:
            # Created (and the schema made) here, before the reader thread starts.
            self._writer = self._connect()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"sqlite:{self.path.name}", daemon=True
        )
        self._thread.start()
        await ready
        ids = await self._read(
            lambda c: c.execute(
                "SELECT (SELECT COALESCE(MAX(message_id), 0) FROM queue_messages),"
                " (SELECT COALESCE(MAX(schedule_id), 0) FROM schedules),"
                " (SELECT COALESCE(MAX(seq), 0) FROM workflow_history),"
                " (SELECT COALESCE(MAX(run_id), 0) FROM runs)"
            ).fetchone()
        )
        marks = dict(
            await self._read(
                lambda c: c.execute("SELECT k, v FROM meta WHERE k LIKE 'hwm:%'").fetchall()
            )
        )
        # A run id is its message's id: never hand out one a run row already has.
        ids = (max(ids[0], ids[3]), ids[1], ids[2])
        for name, highest in zip(("message_id", "schedule_id", "seq"), ids, strict=True):
            start = max(int(highest), int(marks.get(f"hwm:{name}", 0)))
            self._counters[name] = start
            self._reserved[name] = start

    async def close(self) -> None:
        if self._closed or self._thread is None:
            return
        await self.flush()
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (k, v) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} was written by a newer agentvm (schema {row[0]} > {SCHEMA_VERSION})"
            )
        return conn

    # -- the database thread

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except BaseException as exc:  # report the failure to open() and stop
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            kind, payload = item
            if kind == "read":
                fn, fut = payload
                try:
                    result = fn(conn)
                except BaseException as exc:
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                else:
                    loop.call_soon_threadsafe(_set_result, fut, result)
                continue
            writes: list[_Write] = payload
            # Gather whatever else is waiting so one COMMIT serves them all.
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt[0] != "write":
                    self._commit(conn, writes)
                    writes = []
                    if nxt is _STOP:
                        conn.close()
                        return
                    self._queue_front(nxt, conn)
                    break
                writes.extend(nxt[1])
            if writes:
                self._commit(conn, writes)
        conn.close()

    def _queue_front(self, item: Any, conn: sqlite3.Connection) -> None:
        # A read that arrived behind writes: serve it now, in order.
        fn, fut = item[1]
        loop = self._loop
        assert loop is not None
        try:
            result = fn(conn)
        except BaseException as exc:
            loop.call_soon_threadsafe(_set_exception, fut, exc)
        else:
            loop.call_soon_threadsafe(_set_result, fut, result)

    def _commit(self, conn: sqlite3.Connection, writes: list[_Write]) -> None:
        loop = self._loop
        assert loop is not None
        if conn is self._writer:
            # On the loop already: resolve the futures directly.
            notify: Any = _call
        else:
            notify = loop.call_soon_threadsafe
        cur = conn.cursor()
        try:
            if len(writes) == 1 and len(writes[0][0]) == 1 and writes[0][0][0][0] in _ONE_STATEMENT:
                # A lone step commit, often: two statements fewer.
                _apply(cur, writes[0][0][0])
            else:
                cur.execute("BEGIN IMMEDIATE")
                for ops, _ in writes:
                    for op in ops:
                        _apply(cur, op)
                cur.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK") if conn.in_transaction else None
            # Commit each submission on its own so one bad batch fails alone.
            results: list[tuple[_Waiter | None, BaseException | None]] = []
            for ops, fut in writes:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for op in ops:
                        _apply(conn, op)
                    conn.execute("COMMIT")
                    results.append((fut, None))
                except Exception as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    results.append((fut, _typed(exc)))
            notify(_resolve_each, results)
            return
        futs = [fut for _, fut in writes if fut is not None]
        if futs:
            notify(_resolve_all, futs)

    # -- writes (event-loop side)

    def submit(self, ops: list[Op]) -> asyncio.Future[None]:
        loop = self._loop
        assert loop is not None, "store is not open"
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((ops, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._hand_over)
        return fut

    def submit_await(self, ops: list[Op]) -> Awaitable[None]:
        if self._writer is None:
            return self.submit(ops)
        # The commit runs on the loop, in a hand-over queued ahead of the caller's
        # resumption: one bare yield finds it done (one loop iteration, not two).
        ack = _Ack()
        self._pending.append((ops, ack))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop
            assert loop is not None, "store is not open"
            loop.call_soon(self._hand_over)
        return ack

    def submit_nowait(self, ops: list[Op]) -> None:
        loop = self._loop
        assert loop is not None, "store is not open"
        self._pending.append((ops, None))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            batch, self._pending = self._pending, []
            if self._writer is not None:
                self._commit(self._writer, batch)
            else:
                self._queue.put(("write", batch))

    async def flush(self) -> None:
        await self.submit([])

    def _next(self, name: str) -> int:
        value = self._counters[name] + 1
        self._counters[name] = value
        if value > self._reserved[name]:
            self._reserved[name] = value + 4096
            self.submit_nowait([(base.SET_META, f"hwm:{name}", str(self._reserved[name]))])
        return value

    def next_message_id(self) -> int:
        return self._next("message_id")

    def next_schedule_id(self) -> int:
        return self._next("schedule_id")

    def next_seq(self) -> int:
        return self._next("seq")

    # -- reads

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = self._loop
        assert loop is not None, "store is not open"
        # Commit (or hand over) pending writes first so the read sees them.
        self._hand_over()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(("read", (fn, fut)))
        return fut

    async def find_actor(self, name: str, key: tuple[str, ...]) -> ActorRecord | None:
        key_json = json.dumps(list(key), separators=(",", ":"))
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {_ACTOR_COLS} FROM actors WHERE name = ? AND key = ?", (name, key_json)
            ).fetchone()
        )
        return _actor(row) if row else None

    async def get_actor(self, actor_id: str) -> ActorRecord | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {_ACTOR_COLS} FROM actors WHERE actor_id = ?", (actor_id,)
            ).fetchone()
        )
        return _actor(row) if row else None

    async def list_actors(self, name: str | None = None) -> list[ActorRecord]:
        if name is None:
            rows = await self._read(
                lambda c: c.execute(
                    f"SELECT {_ACTOR_COLS} FROM actors ORDER BY created_at"
                ).fetchall()
            )
        else:
            rows = await self._read(
                lambda c: c.execute(
                    f"SELECT {_ACTOR_COLS} FROM actors WHERE name = ? ORDER BY created_at",
                    (name,),
                ).fetchall()
            )
        return [_actor(r) for r in rows]

    async def load_snapshots(self, actor_ids: list[str]) -> dict[str, ActorSnapshot]:
        def read(c: sqlite3.Connection) -> dict[str, ActorSnapshot]:
            out: dict[str, ActorSnapshot] = {}
            # Chunk to stay under SQLite's bound-parameter limit.
            for i in range(0, len(actor_ids), 500):
                chunk = actor_ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for row in c.execute(
                    f"SELECT {_ACTOR_COLS} FROM actors WHERE actor_id IN ({marks})", chunk
                ):
                    out[row[0]] = ActorSnapshot(_actor(row))
                for row in c.execute(
                    f"SELECT actor_id, {_HISTORY_COLS} FROM workflow_history "
                    f"WHERE actor_id IN ({marks}) AND {_NOT_RUN_PATH} ORDER BY seq",
                    chunk,
                ):
                    snap = out.get(row[0])
                    if snap is not None:
                        snap.history.append(_history(row[1:]))
                # Unfinished runs and their histories (finished ones are not replayed).
                for row in c.execute(
                    f"SELECT {_RUN_COLS} FROM runs r JOIN actors a USING (actor_id) "
                    f"WHERE r.actor_id IN ({marks}) AND r.status IN ('queued','running') "
                    "ORDER BY r.run_id",
                    chunk,
                ):
                    snap = out.get(row[1])
                    if snap is not None:
                        run = _run(row)
                        snap.runs.append(run)
                        snap.run_history[run.run_id] = _read_run_history(
                            c, run.actor_id, run.run_id
                        )
                for row in c.execute(
                    "SELECT message_id, actor_id, queue, body, created_at FROM queue_messages "
                    f"WHERE actor_id IN ({marks}) ORDER BY message_id",
                    chunk,
                ):
                    snap = out.get(row[1])
                    if snap is not None:
                        snap.messages.append(_message(row))
            return out

        return await self._read(read)

    async def load_history(self, actor_id: str) -> list[HistoryRecord]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_HISTORY_COLS} FROM workflow_history WHERE actor_id = ? "
                f"AND {_NOT_RUN_PATH} ORDER BY seq",
                (actor_id,),
            ).fetchall()
        )
        return [_history(r) for r in rows]

    async def load_run_history(self, actor_id: str, run_id: int) -> list[HistoryRecord]:
        return await self._read(lambda c: _read_run_history(c, actor_id, run_id))

    async def list_runs(
        self,
        actor_id: str | None = None,
        *,
        status: str | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("r.actor_id", actor_id), ("r.status", status), ("a.name", name)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {_RUN_COLS} FROM runs r JOIN actors a USING (actor_id)"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.run_id DESC LIMIT ?"
        args.append(-1 if limit is None else limit)
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [_run(r) for r in rows]

    async def get_run(self, actor_id: str, run_id: int) -> RunRecord | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {_RUN_COLS} FROM runs r JOIN actors a USING (actor_id) "
                "WHERE r.run_id = ? AND r.actor_id = ?",
                (run_id, actor_id),
            ).fetchone()
        )
        return _run(row) if row else None

    async def load_messages(self, actor_id: str) -> list[MessageRecord]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT message_id, actor_id, queue, body, created_at FROM queue_messages "
                "WHERE actor_id = ? ORDER BY message_id",
                (actor_id,),
            ).fetchall()
        )
        return [_message(r) for r in rows]

    async def load_schedules(self, actor_id: str | None = None) -> list[ScheduleRecord]:
        sql = "SELECT schedule_id, actor_id, fire_at, action, args, created_at FROM schedules"
        if actor_id is None:
            rows = await self._read(lambda c: c.execute(sql + " ORDER BY fire_at").fetchall())
        else:
            rows = await self._read(
                lambda c: c.execute(
                    sql + " WHERE actor_id = ? ORDER BY fire_at", (actor_id,)
                ).fetchall()
            )
        return [ScheduleRecord(*r) for r in rows]

    async def read_log(
        self, actor_id: str, stream: str, since: int = 0, limit: int | None = None
    ) -> list[LogRecord]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT actor_id, stream, seq, payload, created_at FROM actor_logs "
                "WHERE actor_id = ? AND stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (actor_id, stream, since, -1 if limit is None else limit),
            ).fetchall()
        )
        return [LogRecord(*r) for r in rows]

    async def last_log_seq(self, actor_id: str, stream: str) -> int:
        row = await self._read(
            lambda c: c.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM actor_logs WHERE actor_id = ? AND stream = ?",
                (actor_id, stream),
            ).fetchone()
        )
        return int(row[0])

    async def actors_to_recover(self) -> list[ActorRecord]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_ACTOR_COLS} FROM actors WHERE sleeping = 0 OR alarm_at IS NOT NULL"
            ).fetchall()
        )
        return [_actor(r) for r in rows]


def _call(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve_all(futs: list[_Waiter]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)


def _typed(exc: Exception) -> Exception:
    """A full disk is a typed error the caller can act on, not an internal one."""
    if isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc)
    ):
        return StorageFull(f"the database's disk is full; nothing was written ({exc})")
    return exc


def _resolve_each(results: list[tuple[_Waiter | None, BaseException | None]]) -> None:
    for fut, exc in results:
        if fut is None:
            continue
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
