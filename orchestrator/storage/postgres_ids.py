"""The PostgreSQL store's ids: hi-lo blocks from the database's sequences, handed out
synchronously, so they are unique across hosts and increasing per host."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .postgres import PostgresStore

BLOCK = 1000  # ids per nextval: the sequences' INCREMENT BY
_SEQUENCES = {"message_id": "message_ids", "schedule_id": "schedule_ids", "seq": "history_seqs"}


class _Ids:
    """Hi-lo ids from one sequence: blocks of ``BLOCK``, kept two blocks ahead."""

    def __init__(self, store: PostgresStore, sequence: str) -> None:
        self.store = store
        self.sequence = sequence
        self.next = 0
        self.end = 0  # exclusive
        self.spare: deque[int] = deque()
        self.refilling = False

    def take(self) -> int:
        if self.next >= self.end:
            if not self.spare:
                # The refill has not landed (thousands of ids in one tick): fetch one
                # block synchronously rather than ever hand out an unreserved id.
                self.spare.append(self.store._nextval_blocking(self.sequence))
            start = self.spare.popleft()
            self.next, self.end = start, start + BLOCK
        if len(self.spare) < 2 and not self.refilling:
            self.refilling = True
            self.store._spawn(self._refill())
        value = self.next
        self.next += 1
        return value

    async def _refill(self) -> None:
        try:
            while len(self.spare) < 2:
                self.spare.append(await self.store._nextval(self.sequence))
        finally:
            self.refilling = False

    async def above(self, value: int) -> None:
        """Make the next id greater than ``value`` (an id another host handed out):
        any block reserved from now on is above every block reserved before."""
        if self.next > value:
            return
        while self.spare and self.spare[0] + BLOCK - 1 <= value:
            self.spare.popleft()
        if not self.spare:
            self.spare.append(await self.store._nextval(self.sequence))
        self.end = 0  # move to the first spare block on the next take()
