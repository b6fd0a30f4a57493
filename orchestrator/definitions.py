"""Declaring actors: ``actor(...)``, ``queue()``, ``event()`` and ``setup(use=...)``."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

Handler = Callable[..., Any]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A declared queue; with ``body`` (a pydantic model) sends are validated.

    With ``run`` every message is a *run*: ``run(ctx, message)`` is a durable workflow
    of its own, at most ``concurrency`` at once per actor (None: the engine's
    ``run_concurrency``)."""

    description: str = ""
    body: type[BaseModel] | None = None
    run: Handler | None = None
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A declared broadcast event."""

    description: str = ""


def queue(
    description: str = "",
    *,
    body: type[BaseModel] | None = None,
    run: Handler | None = None,
    concurrency: int | None = None,
) -> QueueSpec:
    """Declare a queue on an actor: ``queues={"jobs": queue()}``. Give ``body`` a
    pydantic model to refuse malformed messages at send time, naming the field.

    ``run=handler`` makes each message a run: ``async def handler(ctx, message)`` is a
    per-message durable workflow (``ctx`` is a :class:`WorkflowContext`); its return
    value completes the message, an exception fails that run only. ``concurrency``
    bounds how many runs of this queue execute at once per actor (``1``: serial)."""
    if run is not None and not callable(run):
        raise TypeError(f"queue run= must be an async function, not {run!r}")
    if concurrency is not None:
        if run is None:
            raise ValueError("queue concurrency= only applies to a queue with run=")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"queue concurrency must be an integer >= 1, not {concurrency!r}")
    return QueueSpec(description, body, run, concurrency)


def event(description: str = "") -> EventSpec:
    """Declare a broadcast event: ``events={"progress": event()}``."""
    return EventSpec(description)


@dataclass(slots=True)
class ActorOptions:
    """Per-actor-type runtime options."""

    # Seconds an idle actor stays in memory before it sleeps; None never sleeps.
    sleep_timeout: float | None = 30.0
    # Queue limits (None: use the engine's defaults).
    max_queue_length: int | None = None
    max_message_size: int | None = None


@dataclass(slots=True)
class ActorDefinition:
    """What ``actor(...)`` returns; give it a name with ``setup(use={name: definition})``."""

    state: Any = None
    vars: Any = None
    create_state: Handler | None = None
    create_vars: Handler | None = None
    actions: dict[str, Handler] = field(default_factory=dict)
    queues: dict[str, QueueSpec] = field(default_factory=dict)
    events: dict[str, EventSpec] = field(default_factory=dict)
    run: Handler | None = None
    on_create: Handler | None = None
    on_wake: Handler | None = None
    on_sleep: Handler | None = None
    on_destroy: Handler | None = None
    options: ActorOptions = field(default_factory=ActorOptions)
    name: str | None = None

    def initial_state(self, input: Any) -> Any:
        if self.create_state is not None:
            return self.create_state(input)
        return copy.deepcopy(self.state)

    def initial_vars(self) -> Any:
        if self.create_vars is not None:
            return self.create_vars()
        return copy.deepcopy(self.vars)

    def action(self, fn: Handler | None = None, *, name: str | None = None) -> Any:
        """Decorator adding an action: ``@my_actor.action``."""

        def register(f: Handler) -> Handler:
            self.actions[name or f.__name__] = f
            return f

        return register(fn) if fn is not None else register

    @property
    def is_workflow(self) -> bool:
        return getattr(self.run, "__agentvm_workflow__", False)

    @property
    def run_queues(self) -> dict[str, QueueSpec]:
        """The queues whose messages are runs (declared with ``run=``)."""
        return {n: q for n, q in self.queues.items() if q.run is not None}


def actor(
    *,
    state: Any = None,
    create_state: Handler | None = None,
    vars: Any = None,
    create_vars: Handler | None = None,
    actions: Mapping[str, Handler] | None = None,
    queues: Mapping[str, QueueSpec] | None = None,
    events: Mapping[str, EventSpec] | None = None,
    run: Handler | None = None,
    on_create: Handler | None = None,
    on_wake: Handler | None = None,
    on_sleep: Handler | None = None,
    on_destroy: Handler | None = None,
    options: ActorOptions | Mapping[str, Any] | None = None,
) -> ActorDefinition:
    """Define an actor type.

    ``state`` is JSON and persisted (deep-copied per actor; or build it from the
    create input with ``create_state(input)``); ``vars`` live in memory only.
    Actions take the action context first: ``def get_state(c): return c.state``.
    ``run`` is a plain ``async def run(c)`` or a ``workflow(fn)``.
    """
    if isinstance(options, Mapping):
        options = ActorOptions(**options)
    for label, table in (("action", actions), ("queue", queues), ("event", events)):
        for key in table or {}:
            if not isinstance(key, str) or not _NAME_RE.match(key):
                raise ValueError(f"invalid {label} name {key!r}")
    return ActorDefinition(
        state=state,
        create_state=create_state,
        vars=vars,
        create_vars=create_vars,
        actions=dict(actions or {}),
        queues=dict(queues or {}),
        events=dict(events or {}),
        run=run,
        on_create=on_create,
        on_wake=on_wake,
        on_sleep=on_sleep,
        on_destroy=on_destroy,
        options=options or ActorOptions(),
    )


class Registry:
    """The set of actor types an engine runs; made by :func:`setup`."""

    def __init__(self, actors: Mapping[str, ActorDefinition]) -> None:
        self.actors: dict[str, ActorDefinition] = {}
        for name, definition in actors.items():
            self.add(name, definition)

    def add(self, name: str, definition: ActorDefinition) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid actor name {name!r}")
        if not isinstance(definition, ActorDefinition):
            raise TypeError(f"{name}: expected an actor(...) definition, got {definition!r}")
        definition.name = name
        self.actors[name] = definition

    def __contains__(self, name: object) -> bool:
        return name in self.actors

    def get(self, name: str) -> ActorDefinition | None:
        return self.actors.get(name)


def setup(*, use: Mapping[str, ActorDefinition]) -> Registry:
    """Collect actor definitions under their names: ``setup(use={"counter": counter})``."""
    return Registry(use)


# --- actions from a class -----------------------------------------------------------------

_ACTION_MARK = "__agentvm_action__"


def action(fn: Handler | None = None, *, name: str | None = None) -> Any:
    """Mark a method as an actor action, for :func:`actions_of`: ``@action`` or
    ``@action(name="exec")`` (a name that is not a Python identifier)."""

    def mark(f: Handler) -> Handler:
        setattr(f, _ACTION_MARK, name or f.__name__)
        return f

    return mark(fn) if fn is not None else mark


def actions_of(*objects: Any) -> dict[str, Handler]:
    """The ``@action`` methods of ``objects`` as an ``actions`` mapping of bound
    methods (``async def exec(self, c, command, opts=None)`` becomes ``"exec"``), so
    an actor's actions can live in a class where each is found, imported and tested::

        actor(actions=actions_of(VmActions(manager)), ...)

    Later objects (and subclasses) override earlier names; a name used twice by
    different methods of one object is a ``ValueError``."""
    out: dict[str, Handler] = {}
    for obj in objects:
        seen: dict[str, str] = {}
        for klass in reversed(type(obj).__mro__):
            for attr, value in vars(klass).items():
                label = getattr(value, _ACTION_MARK, None)
                if not isinstance(label, str):
                    continue
                if not _NAME_RE.match(label):
                    raise ValueError(f"invalid action name {label!r}")
                other = seen.get(label)
                if other is not None and other != attr:
                    raise ValueError(f"action {label!r} is both {other} and {attr}")
                seen[label] = attr
                out[label] = getattr(obj, attr)
    return out
