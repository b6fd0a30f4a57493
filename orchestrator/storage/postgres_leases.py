"""The PostgreSQL store's cluster methods: hosts heartbeat, and each actor is owned
through a lease carrying a fencing token (docs/scale.md). Every time in the
``hosts`` and ``leases`` tables is the database's clock
(``extract(epoch from clock_timestamp())``), never a host's, so clock skew between
hosts cannot make a lease look expired. Mixed into :class:`PostgresStore`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LeaseLost
from .base import ActorRecord
from .sqlite_ops import _ACTOR_COLS, _actor

if TYPE_CHECKING:
    import asyncpg

_NOW = "extract(epoch from clock_timestamp())::double precision"


@dataclass(slots=True)
class HostRecord:
    host_id: str
    url: str
    engine_id: str
    started_at: float
    heartbeat_at: float
    load: dict[str, Any]
    stopped: bool
    alive: bool
    leases: int


@dataclass(slots=True)
class LeaseResult:
    acquired: bool
    token: int | None
    owner_host_id: str
    owner_url: str | None


@dataclass(slots=True)
class LeaseInfo:
    actor_id: str
    host_id: str
    token: int
    expires_at: float
    url: str | None
    alive: bool  # the lease has not expired and its host has not stopped


class LeaseMethods:
    """Hosts and leases; needs the store's ``pool``, ``flush`` and ``_fetch``."""

    if TYPE_CHECKING:

        @property
        def pool(self) -> asyncpg.Pool: ...

        async def flush(self) -> None: ...

        async def _fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def heartbeat(self, host_id: str, url: str, engine_id: str, load: dict[str, Any]) -> None:
        """Upsert this host's row: alive now, with its load."""
        await self.pool.execute(
            "INSERT INTO hosts (host_id, url, engine_id, started_at, heartbeat_at, load, stopped) "
            f"VALUES ($1, $2, $3, {_NOW}, {_NOW}, $4, false) "
            "ON CONFLICT (host_id) DO UPDATE SET url = excluded.url, "
            "engine_id = excluded.engine_id, heartbeat_at = excluded.heartbeat_at, "
            "load = excluded.load, stopped = false, started_at = CASE WHEN hosts.stopped "
            "THEN excluded.started_at ELSE hosts.started_at END",
            host_id,
            url,
            engine_id,
            json.dumps(load, separators=(",", ":"), default=str),
        )

    async def host_stopped(self, host_id: str) -> None:
        """A clean shutdown: the host is marked stopped and its leases are released
        (after the writes submitted before this call have committed)."""
        await self.flush()
        async with self.pool.acquire() as c, c.transaction():
            await c.execute("UPDATE hosts SET stopped = true WHERE host_id = $1", host_id)
            await c.execute("DELETE FROM leases WHERE host_id = $1", host_id)

    async def list_hosts(self, ttl: float) -> list[HostRecord]:
        rows = await self.pool.fetch(
            "SELECT h.host_id, h.url, h.engine_id, h.started_at, h.heartbeat_at, h.load, "
            f"h.stopped, (NOT h.stopped AND h.heartbeat_at > {_NOW} - $1) AS alive, "
            "(SELECT count(*) FROM leases l WHERE l.host_id = h.host_id) AS leases "
            "FROM hosts h ORDER BY h.host_id",
            ttl,
        )
        return [
            HostRecord(
                host_id=r[0],
                url=r[1],
                engine_id=r[2],
                started_at=r[3],
                heartbeat_at=r[4],
                load=json.loads(r[5] or "{}"),
                stopped=r[6],
                alive=r[7],
                leases=int(r[8]),
            )
            for r in rows
        ]

    async def acquire_lease(self, actor_id: str, host_id: str, ttl: float) -> LeaseResult:
        """Take the actor's lease if it is free, expired, held by a stopped host, or
        already ours (then the token stays; a change of hands gets a new token)."""
        for _ in range(5):
            token = await self.pool.fetchval(
                f"WITH now AS (SELECT {_NOW} AS t) "
                "INSERT INTO leases AS l (actor_id, host_id, token, expires_at) "
                "SELECT $1, $2, nextval('lease_tokens'), now.t + $3 FROM now "
                "ON CONFLICT (actor_id) DO UPDATE SET "
                "token = CASE WHEN l.host_id = excluded.host_id THEN l.token "
                "ELSE excluded.token END, "
                "host_id = excluded.host_id, expires_at = excluded.expires_at "
                "WHERE l.host_id = excluded.host_id OR l.expires_at < (SELECT t FROM now) "
                "OR EXISTS (SELECT 1 FROM hosts h WHERE h.host_id = l.host_id AND h.stopped) "
                "RETURNING l.token",
                actor_id,
                host_id,
                ttl,
            )
            if token is not None:
                return LeaseResult(True, int(token), host_id, None)
            row = await self.pool.fetchrow(
                "SELECT l.host_id, h.url FROM leases l LEFT JOIN hosts h USING (host_id) "
                "WHERE l.actor_id = $1",
                actor_id,
            )
            if row is not None:
                return LeaseResult(False, None, row[0], row[1])
            # Released between the two statements: try again.
        raise LeaseLost(f"could not settle the lease of {actor_id}", actor_id=actor_id)

    async def renew_leases(self, host_id: str, ttl: float) -> set[str]:
        """Extend every lease ``host_id`` holds; the actor ids still held."""
        rows = await self.pool.fetch(
            f"UPDATE leases SET expires_at = {_NOW} + $2 WHERE host_id = $1 RETURNING actor_id",
            host_id,
            ttl,
        )
        return {r[0] for r in rows}

    async def release_lease(self, actor_id: str, host_id: str, token: int) -> None:
        """Give the lease up. Writes submitted before this call commit first, under
        the lease (a commit still in flight would otherwise meet a missing lease)."""
        await self.flush()
        await self.pool.execute(
            "DELETE FROM leases WHERE actor_id = $1 AND host_id = $2 AND token = $3",
            actor_id,
            host_id,
            token,
        )

    async def orphaned_actors(self, ttl: float, limit: int = 500) -> list[ActorRecord]:
        """Actors that need a live owner (awake, or with an alarm) but have none: no
        lease, an expired one, or one whose host stopped or stopped heartbeating."""
        cols = ", ".join("a." + c for c in _ACTOR_COLS.split(", "))
        rows = await self._fetch(
            f"WITH now AS (SELECT {_NOW} AS t) "
            f"SELECT {cols} FROM actors a CROSS JOIN now "
            "LEFT JOIN leases l ON l.actor_id = a.actor_id "
            "LEFT JOIN hosts h ON h.host_id = l.host_id "
            "WHERE (NOT a.sleeping OR a.alarm_at IS NOT NULL) AND (l.actor_id IS NULL "
            "OR l.expires_at < now.t OR h.host_id IS NULL OR h.stopped "
            "OR h.heartbeat_at < now.t - $1) LIMIT $2",
            ttl,
            limit,
        )
        return [_actor(r) for r in rows]

    async def lease_of(self, actor_id: str) -> LeaseInfo | None:
        row = await self.pool.fetchrow(
            "SELECT l.actor_id, l.host_id, l.token, l.expires_at, h.url, "
            f"(l.expires_at >= {_NOW} AND NOT COALESCE(h.stopped, false)) "
            "FROM leases l LEFT JOIN hosts h USING (host_id) WHERE l.actor_id = $1",
            actor_id,
        )
        if row is None:
            return None
        return LeaseInfo(row[0], row[1], int(row[2]), row[3], row[4], bool(row[5]))
