"""Durable storage behind a small interface; SQLite is the embedded default,
PostgreSQL the store several hosts share."""

import os

from .base import (
    ActorRecord,
    ActorSnapshot,
    HistoryRecord,
    LogRecord,
    MessageRecord,
    RunRecord,
    ScheduleRecord,
    Store,
)
from .postgres import PostgresStore
from .postgres_leases import HostRecord, LeaseInfo, LeaseResult
from .sqlite import SQLiteStore


def is_postgres_url(db: str | os.PathLike[str]) -> bool:
    """Whether ``db`` names a PostgreSQL server (a path never does)."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def open_store(
    db: str | os.PathLike[str], *, synchronous: str = "NORMAL", pool_size: int = 10
) -> Store:
    """The store for ``db``: a ``postgresql://`` / ``postgres://`` URL → PostgreSQL
    (``pool_size`` connections at most), anything else → a SQLite file."""
    if isinstance(db, str) and is_postgres_url(db):
        return PostgresStore(db, pool_size=pool_size)
    return SQLiteStore(db, synchronous=synchronous)


__all__ = [
    "ActorRecord",
    "ActorSnapshot",
    "HistoryRecord",
    "HostRecord",
    "LeaseInfo",
    "LeaseResult",
    "LogRecord",
    "MessageRecord",
    "PostgresStore",
    "RunRecord",
    "SQLiteStore",
    "ScheduleRecord",
    "Store",
    "is_postgres_url",
    "open_store",
]
