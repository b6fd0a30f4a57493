"""Durations and instants as the public API accepts them (seconds or datetime types)."""

from __future__ import annotations

from datetime import datetime, timedelta


def seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def epoch(value: float | datetime) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)
