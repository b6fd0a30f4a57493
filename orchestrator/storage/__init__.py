"""Durable storage behind a small interface; SQLite is the embedded default."""

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
from .sqlite import SQLiteStore

__all__ = [
    "ActorRecord",
    "ActorSnapshot",
    "HistoryRecord",
    "LogRecord",
    "MessageRecord",
    "RunRecord",
    "SQLiteStore",
    "ScheduleRecord",
    "Store",
]
