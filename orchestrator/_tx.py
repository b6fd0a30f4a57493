"""The unit of commit an action or a step builds up while it runs.

Schedules and self-sends made inside an action or a step are not written on
their own: they join that action's or step's commit, so they happen exactly
when its state changes do. Outside an action or step they commit at once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from .storage.base import Op


@dataclass(slots=True)
class Tx:
    ops: list[Op] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    # A task started inside an action inherits its context, and so this Tx; once the
    # action has committed, the Tx is closed and such late writes commit on their own.
    closed: bool = False

    def run_after(self) -> None:
        for fn in self.after:
            fn()


current_tx: ContextVar[Tx | None] = ContextVar("agentvm_tx", default=None)


def open_tx() -> Tx | None:
    """The transaction of the running action or step, if it is still open."""
    tx = current_tx.get()
    return tx if tx is not None and not tx.closed else None
