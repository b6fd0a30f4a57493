"""Queue messages as consumers see them, and the non-workflow consumer API."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ._time import seconds
from .errors import InvalidRequest, MessageNotCompletable

if TYPE_CHECKING:
    from ._instance import ActorInstance


class SendResult(BaseModel):
    """What ``handle.send`` returns. With ``wait=True``: ``completed`` (``response``),
    ``failed`` (a run's ``error``: ``{group, code, message, metadata}``), ``cancelled``,
    or ``timed_out`` (the wait ran out; the message is still queued or running)."""

    status: Literal["queued", "completed", "failed", "cancelled", "timed_out"]
    message_id: int | None = None
    response: Any = None
    error: dict[str, Any] | None = None


class Message:
    """A received queue message. ``name`` is the queue it was sent to."""

    __slots__ = ("_completed", "_instance", "body", "completable", "id", "name")

    def __init__(
        self, instance: ActorInstance, id: int, name: str, body: Any, completable: bool
    ) -> None:
        self._instance = instance
        self.id = id
        self.name = name
        self.body = body
        self.completable = completable
        self._completed = False

    @property
    def queue(self) -> str:
        return self.name

    async def complete(self, response: Any = None) -> None:
        """Finish a completable message: it is removed, and a sender waiting with
        ``wait=True`` gets ``response``. Completing twice is a no-op."""
        if not self.completable:
            raise MessageNotCompletable(
                f"message {self.id} on queue {self.name!r} was not received with completable=True",
                message_id=self.id,
            )
        if self._completed:
            return
        await self._instance.complete_message(self.id, response)
        self._completed = True

    def __repr__(self) -> str:
        return f"Message(id={self.id}, name={self.name!r}, body={self.body!r})"


class ActorQueue:
    """``c.queue`` in actions and plain run handlers.

    Delivery is at-least-once: a message received without ``completable`` is
    acknowledged (deleted) when this consumer asks for its next message, or when
    the action or run handler that received it returns. If the process dies
    first, the message is delivered again. A completable message stays until
    ``message.complete()``.
    """

    def __init__(self, instance: ActorInstance) -> None:
        self._instance = instance
        self._unacked: list[int] = []

    async def send(self, queue: str, body: Any = None) -> int:
        """Push a message onto this actor's own queue; returns its id."""
        return await self._instance.send_to_self(queue, body)

    # Rivet spells the self-send ``push``.
    push = send

    def _ack(self) -> None:
        if self._unacked:
            ids, self._unacked = self._unacked, []
            self._instance.ack_messages(ids)

    async def next(
        self,
        *,
        names: Sequence[str] | None = None,
        completable: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Message | None:
        msgs = await self.next_batch(count=1, names=names, completable=completable, timeout=timeout)
        return msgs[0] if msgs else None

    async def next_batch(
        self,
        *,
        count: int,
        names: Sequence[str] | None = None,
        completable: bool = False,
        timeout: float | timedelta | None = None,
    ) -> list[Message]:
        if count < 1:
            raise InvalidRequest("count must be at least 1", field="count")
        self._ack()
        inst = self._instance
        if names is not None:
            names = list(names)
            inst.check_queue_names(names)
        records = inst.take_messages(names, count)
        if not records:
            deadline = None if timeout is None else time.time() + seconds(timeout)
            with inst.parked(deadline):
                records = await inst.wait_messages(names, count, deadline)
        return self._wrap(records, completable)

    def try_next(
        self, *, names: Sequence[str] | None = None, completable: bool = False
    ) -> Message | None:
        """Take a message if one is waiting; never blocks."""
        self._ack()
        inst = self._instance
        if names is not None:
            names = list(names)
            inst.check_queue_names(names)
        records = inst.take_messages(names, 1)
        msgs = self._wrap(records, completable)
        return msgs[0] if msgs else None

    async def iter(
        self, *, names: Sequence[str] | None = None, completable: bool = False
    ) -> AsyncIterator[Message]:
        """``async for message in c.queue.iter(): ...`` — forever, one at a time."""
        while True:
            msg = await self.next(names=names, completable=completable)
            if msg is not None:
                yield msg

    def _wrap(self, records: list[Any], completable: bool) -> list[Message]:
        inst = self._instance
        out = []
        for r in records:
            inst.lease(r)
            if not completable:
                self._unacked.append(r.message_id)
            out.append(Message(inst, r.message_id, r.queue, json.loads(r.body), completable))
        return out
