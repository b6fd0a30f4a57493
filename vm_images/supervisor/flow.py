"""Per-channel credit windows (shared by host and supervisor)."""

from __future__ import annotations

import asyncio

from .protocol import CREDIT_THRESHOLD, WINDOW


class SendWindow:
    """Bytes this side may still send on one channel; waits when exhausted."""

    def __init__(self, initial: int = WINDOW) -> None:
        self._credit = initial
        self._changed = asyncio.Event()
        self._closed = False

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent, then take them."""
        while self._credit < n and not self._closed:
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            raise ConnectionError("channel closed while waiting for credit")
        self._credit -= n

    def grant(self, n: int) -> None:
        self._credit += n
        self._changed.set()

    def close(self) -> None:
        self._closed = True
        self._changed.set()


class RecvWindow:
    """Counts consumed bytes and says when to hand credit back to the sender."""

    def __init__(self) -> None:
        self._pending = 0

    def consumed(self, n: int) -> int:
        """Record ``n`` consumed bytes; return credit to send now (0 = not yet)."""
        self._pending += n
        if self._pending >= CREDIT_THRESHOLD:
            grant, self._pending = self._pending, 0
            return grant
        return 0

    def flush(self) -> int:
        grant, self._pending = self._pending, 0
        return grant


__all__ = ["WINDOW", "RecvWindow", "SendWindow"]
