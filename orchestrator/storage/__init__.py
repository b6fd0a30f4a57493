"""Durable storage behind a small interface; SQLite is the embedded default,
PostgreSQL the store several hosts share."""

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


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str, *, synchronous: str = "NORMAL", pool_size: int = 10) -> Store:
    """The store for ``db``: a ``postgresql://`` / ``postgres://`` URL → PostgreSQL
    (``pool_size`` connections at most), anything else → a SQLite file."""
    if is_postgres_url(db):
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
