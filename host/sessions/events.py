"""Where session events go: a numbered store (the "sink") that may also broadcast.

The manager appends every event in order and reads them back for
``get_session_events``. The vm actor's wiring is one line::

    SessionManager(sandbox, store=ActorLogEventStore(c))

which appends to ``c.log("session:<id>")`` and broadcasts ``session_event``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .models import SessionEvent


class EventStore(Protocol):
    async def append(self, event: SessionEvent) -> int:
        """Store ``event`` durably; return its number (1, 2, ... per session)."""
        ...

    async def append_many(self, events: list[SessionEvent]) -> None:
        """Store several events of one session, in order, in one write (the lines of
        one read of the agent's stdout); numbers them like :meth:`append`."""
        ...

    async def read(self, session_id: str, since: int = 0) -> list[SessionEvent]:
        """Events with ``seq > since``, oldest first."""
        ...


class MemoryEventStore:
    """The default: events kept in memory (lost with the process)."""

    def __init__(self) -> None:
        self._events: dict[str, list[SessionEvent]] = {}

    async def append(self, event: SessionEvent) -> int:
        log = self._events.setdefault(event.session_id, [])
        event.seq = len(log) + 1
        log.append(event)
        return event.seq

    async def append_many(self, events: list[SessionEvent]) -> None:
        for event in events:
            await self.append(event)

    async def read(self, session_id: str, since: int = 0) -> list[SessionEvent]:
        return [e for e in self._events.get(session_id, ()) if e.seq > since]


class _Log(Protocol):
    async def append(self, payload: Any) -> int: ...

    async def append_many(self, payloads: list[Any]) -> list[int]: ...

    async def compact(self, payload: Any) -> int: ...

    async def read(self, since: int = 0, limit: int | None = None) -> list[tuple[int, Any]]: ...


class _ActorContext(Protocol):
    def log(self, stream: str) -> Any: ...

    def broadcast(self, event: str, payload: Any = None) -> None: ...


class ActorLogEventStore:
    """Events in the actor's numbered log ``session:<id>``, broadcast as
    ``session_event`` once stored (``ctx`` is the actor context, e.g. ``c``)."""

    def __init__(self, ctx: _ActorContext, *, stream_prefix: str = "session:") -> None:
        self.ctx = ctx
        self.prefix = stream_prefix

    def _log(self, session_id: str) -> _Log:
        log: _Log = self.ctx.log(self.prefix + session_id)
        return log

    async def append(self, event: SessionEvent) -> int:
        payload = event.model_dump(mode="json", exclude={"seq"})
        event.seq = await self._log(event.session_id).append(payload)
        self.ctx.broadcast("session_event", {**payload, "seq": event.seq})  # dumped once
        return event.seq

    async def append_many(self, events: list[SessionEvent]) -> None:
        """One commit for all (one per read of the agent's stdout, not one per line);
        broadcast once stored, in order."""
        if not events:
            return
        payloads = [e.model_dump(mode="json", exclude={"seq"}) for e in events]
        seqs = await self._log(events[0].session_id).append_many(payloads)
        for event, seq, payload in zip(events, seqs, payloads, strict=True):
            event.seq = seq
            self.ctx.broadcast("session_event", {**payload, "seq": seq})

    async def compact(self, session_id: str, data: dict[str, Any]) -> int:
        """Replace a (closed) session's whole log by one ``transcript`` event."""
        event = SessionEvent(session_id=session_id, kind="transcript", data=data)
        return int(
            await self._log(session_id).compact(event.model_dump(mode="json", exclude={"seq"}))
        )

    async def read(
        self, session_id: str, since: int = 0, limit: int | None = None
    ) -> list[SessionEvent]:
        rows = await self._log(session_id).read(since, limit)
        return [SessionEvent.model_validate({**payload, "seq": seq}) for seq, payload in rows]
