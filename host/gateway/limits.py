"""Bounds on what a sandbox can make the gateway hold, and rate-limited logging.

A sandbox can open connections, stall a request head or body, or never read a
response; each of these pins host memory, file descriptors or an upstream
connection. :class:`GatewayLimits` bounds every one (``HostSettings`` sets them from
``AGENTVM_GATEWAY_*``); :class:`LogLimiter` keeps a flood of identical errors from
filling the host's log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, Field


class GatewayLimits(BaseModel):
    """Per-sandbox bounds of the LLM gateway (docs/gateway.md, "Bounds")."""

    max_connections: int = Field(
        32, ge=1, description="open connections per sandbox; more are answered 503 and closed"
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="largest request body (the Messages API's own limit is 32 MB); 413 above",
    )
    buffer_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="a body up to this size is read whole (usage records name its model); "
        "a bigger one is streamed upstream, so a connection holds at most this much",
    )
    header_timeout: float = Field(
        30.0, gt=0, description="seconds to receive a whole request head; 408 and close after"
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds without a byte of the request body before it is dropped"
    )
    idle_timeout: float = Field(
        120.0, gt=0, description="seconds a keep-alive connection may wait for its next request"
    )
    write_timeout: float = Field(
        120.0, gt=0, description="seconds the sandbox may leave a response chunk unread"
    )


@dataclass
class _Bucket:
    window_start: float
    count: int = 0
    suppressed: int = 0


@dataclass
class LogLimiter:
    """At most ``burst`` records per key per ``window`` seconds; the first record of
    the next window says how many were suppressed."""

    logger: logging.Logger
    burst: int = 5
    window: float = 60.0
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def log(
        self, level: int, key: str, msg: str, *args: object, exc_info: bool | BaseException = False
    ) -> bool:
        """Log unless this key is over its budget; True when logged."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None or now - bucket.window_start >= self.window:
            suppressed = bucket.suppressed if bucket is not None else 0
            if len(self._buckets) > 1024:  # keys are ours, but stay bounded anyway
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(window_start=now)
            if suppressed:
                self.logger.log(
                    level, "%d similar messages suppressed (%s)", suppressed, key.split("|")[0]
                )
        if bucket.count >= self.burst:
            bucket.suppressed += 1
            return False
        bucket.count += 1
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True
