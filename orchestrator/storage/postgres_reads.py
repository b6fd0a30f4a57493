"""The PostgreSQL store's reads. Each waits for the writes submitted before it (the
store's ``_barrier``), then runs on the connection pool. Mixed into
:class:`PostgresStore`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import base
from .base import (
    ActorRecord,
    ActorSnapshot,
    HistoryRecord,
    LogRecord,
    MessageRecord,
    RunRecord,
    ScheduleRecord,
)
from .sqlite_ops import _ACTOR_COLS, _HISTORY_COLS, _RUN_COLS, _actor, _history, _message, _run

if TYPE_CHECKING:
    import asyncpg

_NOT_RUN_PATH = "NOT (path >= '~run/' AND path < '~run0')"


class ReadMethods:
    """The :class:`Store` reads; needs the store's ``_pool``, ``_barrier``, ``_fetch``,
    ``_fetchrow`` and ``_above_ids``."""

    if TYPE_CHECKING:
        _pool: asyncpg.Pool | None

        async def _barrier(self) -> None: ...

        async def _fetch(self, sql: str, *args: Any) -> list[Any]: ...

        async def _fetchrow(self, sql: str, *args: Any) -> Any: ...

        async def _above_ids(self, snaps: Any) -> None: ...

    async def find_actor(self, name: str, key: tuple[str, ...]) -> ActorRecord | None:
        key_json = json.dumps(list(key), separators=(",", ":"))
        row = await self._fetchrow(
            f"SELECT {_ACTOR_COLS} FROM actors WHERE name = $1 AND key = $2", name, key_json
        )
        return _actor(row) if row else None

    async def get_actor(self, actor_id: str) -> ActorRecord | None:
        row = await self._fetchrow(
            f"SELECT {_ACTOR_COLS} FROM actors WHERE actor_id = $1", actor_id
        )
        return _actor(row) if row else None

    async def list_actors(self, name: str | None = None) -> list[ActorRecord]:
        if name is None:
            rows = await self._fetch(f"SELECT {_ACTOR_COLS} FROM actors ORDER BY created_at")
        else:
            rows = await self._fetch(
                f"SELECT {_ACTOR_COLS} FROM actors WHERE name = $1 ORDER BY created_at", name
            )
        return [_actor(r) for r in rows]

    async def load_snapshots(self, actor_ids: list[str]) -> dict[str, ActorSnapshot]:
        await self._barrier()
        assert self._pool is not None, "store is not open"
        out: dict[str, ActorSnapshot] = {}
        async with self._pool.acquire() as c, c.transaction(isolation="repeatable_read"):
            for row in await c.fetch(
                f"SELECT {_ACTOR_COLS} FROM actors WHERE actor_id = ANY($1::text[])", actor_ids
            ):
                out[row[0]] = ActorSnapshot(_actor(row))
            for row in await c.fetch(
                f"SELECT actor_id, {_HISTORY_COLS} FROM workflow_history "
                f"WHERE actor_id = ANY($1::text[]) AND {_NOT_RUN_PATH} ORDER BY seq",
                actor_ids,
            ):
                snap = out.get(row[0])
                if snap is not None:
                    snap.history.append(_history(tuple(row)[1:]))
            # Unfinished runs and their histories (finished ones are not replayed).
            runs: dict[int, RunRecord] = {}
            for row in await c.fetch(
                f"SELECT {_RUN_COLS} FROM runs r JOIN actors a USING (actor_id) "
                "WHERE r.actor_id = ANY($1::text[]) AND r.status IN ('queued','running') "
                "ORDER BY r.run_id",
                actor_ids,
            ):
                snap = out.get(row[1])
                if snap is not None:
                    run = _run(row)
                    snap.runs.append(run)
                    snap.run_history[run.run_id] = []
                    runs[run.run_id] = run
            if runs:
                for row in await c.fetch(
                    f"SELECT r.run_id, {', '.join('h.' + c for c in _HISTORY_COLS.split(', '))} "
                    "FROM runs r JOIN workflow_history h ON h.actor_id = r.actor_id "
                    "AND h.path >= '~run/' || r.run_id || '/' "
                    "AND h.path < '~run/' || r.run_id || '0' "
                    "WHERE r.run_id = ANY($1::bigint[]) ORDER BY h.seq",
                    list(runs),
                ):
                    out[runs[row[0]].actor_id].run_history[row[0]].append(_history(tuple(row)[1:]))
            for row in await c.fetch(
                "SELECT message_id, actor_id, queue, body, created_at FROM queue_messages "
                "WHERE actor_id = ANY($1::text[]) ORDER BY message_id",
                actor_ids,
            ):
                snap = out.get(row[1])
                if snap is not None:
                    snap.messages.append(_message(tuple(row)))
        await self._above_ids(out.values())
        return out

    async def load_history(self, actor_id: str) -> list[HistoryRecord]:
        rows = await self._fetch(
            f"SELECT {_HISTORY_COLS} FROM workflow_history WHERE actor_id = $1 "
            f"AND {_NOT_RUN_PATH} ORDER BY seq",
            actor_id,
        )
        return [_history(tuple(r)) for r in rows]

    async def load_run_history(self, actor_id: str, run_id: int) -> list[HistoryRecord]:
        scope = base.run_scope(run_id)
        rows = await self._fetch(
            f"SELECT {_HISTORY_COLS} FROM workflow_history WHERE actor_id = $1 "
            "AND path >= $2 AND path < $3 ORDER BY seq",
            actor_id,
            scope + "/",
            scope + "0",
        )
        return [_history(tuple(r)) for r in rows]

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
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        sql = f"SELECT {_RUN_COLS} FROM runs r JOIN actors a USING (actor_id)"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit)
        sql += f" ORDER BY r.run_id DESC LIMIT ${len(args)}"
        return [_run(r) for r in await self._fetch(sql, *args)]

    async def get_run(self, actor_id: str, run_id: int) -> RunRecord | None:
        row = await self._fetchrow(
            f"SELECT {_RUN_COLS} FROM runs r JOIN actors a USING (actor_id) "
            "WHERE r.run_id = $1 AND r.actor_id = $2",
            run_id,
            actor_id,
        )
        return _run(row) if row else None

    async def load_messages(self, actor_id: str) -> list[MessageRecord]:
        rows = await self._fetch(
            "SELECT message_id, actor_id, queue, body, created_at FROM queue_messages "
            "WHERE actor_id = $1 ORDER BY message_id",
            actor_id,
        )
        return [_message(tuple(r)) for r in rows]

    async def load_schedules(self, actor_id: str | None = None) -> list[ScheduleRecord]:
        sql = "SELECT schedule_id, actor_id, fire_at, action, args, created_at FROM schedules"
        if actor_id is None:
            rows = await self._fetch(sql + " ORDER BY fire_at")
        else:
            rows = await self._fetch(sql + " WHERE actor_id = $1 ORDER BY fire_at", actor_id)
        return [ScheduleRecord(*r) for r in rows]

    async def read_log(
        self, actor_id: str, stream: str, since: int = 0, limit: int | None = None
    ) -> list[LogRecord]:
        rows = await self._fetch(
            "SELECT actor_id, stream, seq, payload, created_at FROM actor_logs "
            "WHERE actor_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            actor_id,
            stream,
            since,
            limit,
        )
        return [LogRecord(*r) for r in rows]

    async def last_log_seq(self, actor_id: str, stream: str) -> int:
        row = await self._fetchrow(
            "SELECT COALESCE(MAX(seq), 0) FROM actor_logs WHERE actor_id = $1 AND stream = $2",
            actor_id,
            stream,
        )
        return int(row[0])

    async def actors_to_recover(self) -> list[ActorRecord]:
        rows = await self._fetch(
            f"SELECT {_ACTOR_COLS} FROM actors WHERE NOT sleeping OR alarm_at IS NOT NULL"
        )
        return [_actor(r) for r in rows]
