"""The context object handed to actions, hooks, run handlers and workflow steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._time import epoch, seconds
from .logs import ActorLog
from .queues import ActorQueue

if TYPE_CHECKING:
    from ._instance import ActorInstance
    from .client import Client
    from .storage.base import Store


class Schedule:
    """``c.schedule``: call one of this actor's actions later, durably."""

    def __init__(self, instance: ActorInstance) -> None:
        self._instance = instance

    async def at(self, when: float | datetime, action: str, *args: Any) -> int:
        """Call ``action(*args)`` at ``when`` (epoch seconds or datetime); returns an id."""
        return await self._instance.schedule_action(epoch(when), action, list(args))

    async def after(self, delay: float | timedelta, action: str, *args: Any) -> int:
        """Call ``action(*args)`` after ``delay`` seconds."""
        return await self._instance.schedule_action(
            time.time() + seconds(delay), action, list(args)
        )

    async def cancel(self, schedule_id: int) -> None:
        await self._instance.engine.cancel_schedule(schedule_id)


class ActorContext:
    """``c``: the actor as its own code sees it (state, vars, queue, broadcast, ...)."""

    def __init__(self, instance: ActorInstance) -> None:
        self._instance = instance
        self.queue: ActorQueue = ActorQueue(instance)
        self.schedule = Schedule(instance)

    @property
    def state(self) -> Any:
        return self._instance.state

    @state.setter
    def state(self, value: Any) -> None:
        self._instance.state = value

    @property
    def vars(self) -> Any:
        return self._instance.vars

    @vars.setter
    def vars(self, value: Any) -> None:
        self._instance.vars = value

    @property
    def name(self) -> str:
        return self._instance.name

    @property
    def key(self) -> tuple[str, ...]:
        return self._instance.key

    @property
    def actor_id(self) -> str:
        return self._instance.actor_id

    @property
    def store(self) -> Store:
        return self._instance.engine.store

    def broadcast(self, event: str, payload: Any = None) -> None:
        """Send ``event`` with ``payload`` to every current subscriber."""
        self._instance.broadcast(event, payload)

    def client(self) -> Client:
        """A client for reaching other actors by name."""
        return self._instance.engine.client()

    @property
    def actors(self) -> Client:
        """Shortcut: ``c.actors.vm.get_or_create(key)``."""
        return self._instance.engine.client()

    def log(self, stream: str) -> ActorLog:
        """This actor's numbered append-only log named ``stream``."""
        return ActorLog(self._instance, stream)

    @property
    def engine_stopping(self) -> bool:
        """True while the engine shuts down (``on_sleep`` then means "host restart",
        not "idle"): keep external resources running for the next start to adopt."""
        return not self._instance.engine.running

    def hold(self) -> Callable[[], None]:
        """Keep this actor awake (e.g. while a child process runs); call the
        returned function to let it sleep again. Releasing twice is harmless."""
        inst = self._instance
        inst.begin()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                inst.end()

        return release

    async def destroy(self) -> None:
        """Destroy this actor (after the current handler returns)."""
        self._instance.engine.destroy_later(self._instance.actor_id)
