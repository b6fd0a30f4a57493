"""Bounds on what an agent (or anything writing to its stdout) can make the host hold.

The agent is sandbox code: hostile, and able to write as fast as the pipe allows.
Per session the host caps

- one JSON-RPC line (longer lines are dropped, with a ``protocol_error`` event);
- stored events per second and bytes per second (token buckets; the excess is
  dropped and counted in an ``events_dropped`` marker event);
- the bytes of stored events in total (past it new events are dropped, except the
  session's final ``agent_exit`` / ``session_closed`` and the markers);
- concurrent agent requests, open terminals, terminal output and files read for it.

See docs/sessions.md, "Limits".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

MiB = 1024 * 1024

# Events that are always stored (one each per session at most, or bounded by the
# caller): the end of the session and the drop markers themselves.
FINAL_KINDS = frozenset({"agent_exit", "session_closed", "events_dropped"})


@dataclass(frozen=True)
class SessionLimits:
    """Per-session bounds (defaults are generous for a real agent)."""

    line_max_bytes: int = MiB
    events_per_second: float = 200.0
    event_bytes_per_second: float = 2 * MiB
    # Token-bucket depth, in seconds of the rates above.
    burst_seconds: float = 5.0
    events_max_bytes: int = 64 * MiB
    # Agent requests (fs/*, terminal/*, permission) unanswered at once; more are
    # dropped (never answered) with a protocol_error event.
    max_open_requests: int = 64
    max_terminals: int = 16
    terminal_output_max_bytes: int = MiB
    read_text_max_bytes: int = 8 * MiB
    # The agent_message_chunk text a prompt returns (the events keep all of it).
    prompt_text_max_bytes: int = 4 * MiB
    # How long a drop count may wait for the next stored event before its marker
    # is stored on its own.
    drop_flush_seconds: float = 1.0


Verdict = Literal["ok", "rate", "full"]


class _Bucket:
    def __init__(self, rate: float, depth: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.depth = max(depth, 1.0)
        self.tokens = self.depth
        self.clock = clock
        self.at = clock()

    def can(self, amount: float) -> bool:
        now = self.clock()
        self.tokens = min(self.depth, self.tokens + (now - self.at) * self.rate)
        self.at = now
        # An event bigger than the whole bucket still passes when it is full (else
        # a large legitimate update could never be stored); it empties the bucket.
        return self.tokens >= amount or self.tokens >= self.depth

    def take(self, amount: float) -> None:
        self.tokens -= amount


class EventGate:
    """Decides which of one session's events are stored; counts the rest."""

    def __init__(
        self,
        limits: SessionLimits,
        stored_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.stored_bytes = stored_bytes
        self._events = _Bucket(
            limits.events_per_second, limits.events_per_second * limits.burst_seconds, clock
        )
        self._bytes = _Bucket(
            limits.event_bytes_per_second,
            limits.event_bytes_per_second * limits.burst_seconds,
            clock,
        )
        # Dropped since the last marker.
        self.dropped = 0
        self.dropped_bytes = 0
        self.reason: Verdict = "ok"
        self.total_dropped = 0
        # The store limit was reached and announced with a marker.
        self.full_announced = False

    @property
    def full(self) -> bool:
        return self.stored_bytes >= self.limits.events_max_bytes

    def admit(self, kind: str, size: int, *, rate_limited: bool) -> Verdict:
        """``ok`` (store it), ``rate`` or ``full`` (drop it: :meth:`drop`)."""
        if kind in FINAL_KINDS:
            return "ok"
        if self.stored_bytes + size > self.limits.events_max_bytes:
            return "full"
        if rate_limited:
            # Both buckets must have room; check both before taking from either.
            if not (self._events.can(1) and self._bytes.can(size)):
                return "rate"
            self._events.take(1)
            self._bytes.take(size)
        return "ok"

    def drop(self, size: int, verdict: Verdict) -> None:
        self.dropped += 1
        self.dropped_bytes += size
        self.total_dropped += 1
        if verdict == "full" or self.reason != "full":
            self.reason = verdict

    def stored(self, size: int) -> None:
        self.stored_bytes += size

    def take_marker(self) -> dict[str, object] | None:
        """The ``events_dropped`` data for the drops since the last marker (None: none)."""
        if not self.dropped:
            return None
        data: dict[str, object] = {
            "count": self.dropped,
            "bytes": self.dropped_bytes,
            "reason": "store_full" if self.reason == "full" else "rate_limit",
            "total": self.total_dropped,
        }
        if self.reason == "full":
            data["limit_bytes"] = self.limits.events_max_bytes
            self.full_announced = True
        self.dropped = self.dropped_bytes = 0
        self.reason = "ok"
        return data
