"""Helpers shared by the routes: the engine of a request, resolving actors, JSON replies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from starlette.requests import HTTPConnection
from starlette.responses import Response

from orchestrator import ActorDefinition, Engine
from orchestrator.errors import ActionNotFound, InvalidRequest, QueueNotFound, UnknownActorType
from orchestrator.keys import ActorKey
from orchestrator.wire import to_wire

from .arguments import ArgumentChecker
from .errors import error_response
from .models import ErrorBody
from .paths import parse_key, parse_name
from .settings import ServerSettings

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Documented on every route: our error shape for 4xx and 5xx.
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "caller mistake"},
    "5XX": {"model": ErrorBody, "description": "server fault"},
}


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def settings_of(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def checker_of(request: Request) -> ArgumentChecker:
    checker: ArgumentChecker = request.app.state.arguments
    return checker


async def resolve(
    engine: Engine, name_raw: str, key_raw: str, *, create: bool, input: Any = None
) -> tuple[str, str, ActorKey]:
    """``(actor_id, name, key)`` from raw path parameters."""
    name = parse_name(name_raw, "name")
    key = parse_key(key_raw)
    actor_id = await engine.resolve(name, key, create=create, input=input)
    return actor_id, name, key


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as JSON with bytes as ``{"$bytes": ...}`` (skips response-model
    validation: the payloads are built to match the declared models)."""
    try:
        body = _dumps(to_wire(payload))
    except (TypeError, ValueError) as exc:
        return error_response(
            500, "serialization", "not_json", f"the result is not JSON-serialisable: {exc}"
        )
    return Response(body, status_code=status, media_type="application/json")


def definition_of(engine: Engine, name: str) -> ActorDefinition:
    definition = engine.registry.get(name)
    if definition is None:
        raise UnknownActorType(
            f"no actor type named {name!r}", actor=name, known=sorted(engine.registry.actors)
        )
    return definition


def check_action(engine: Engine, name: str, action: str) -> None:
    """Refuse an unknown action before anything (such as creating the actor) happens."""
    definition = definition_of(engine, name)
    if action not in definition.actions:
        raise ActionNotFound(
            f"actor type {name!r} has no action {action!r}",
            actor=name,
            action=action,
            available=sorted(definition.actions),
        )


def check_queue(engine: Engine, name: str, queue: str) -> None:
    definition = definition_of(engine, name)
    if definition.queues and queue not in definition.queues:
        raise QueueNotFound(
            f"actor type {name!r} has no queue {queue!r}",
            queue=queue,
            declared=sorted(definition.queues),
        )


_QUERY_NAMES: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> Iterator[str]:
    for param in dependant.query_params:
        yield param.alias
    for sub in dependant.dependencies:
        yield from _query_names(sub)


async def reject_unknown_query(request: HTTPConnection) -> None:
    """A router dependency: an unknown query parameter (a typo such as ``?wiat=true``)
    is a 400 naming it, not silently ignored. ``async`` on purpose: FastAPI runs a
    plain ``def`` dependency in a worker thread, a thread hop on every request."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _QUERY_NAMES.get(id(route))
    if allowed is None:
        allowed = _QUERY_NAMES[id(route)] = frozenset(_query_names(dependant))
    for name in request.query_params:
        if name not in allowed:
            raise InvalidRequest(
                f"unknown query parameter {name!r}"
                + (f" (this route takes: {', '.join(sorted(allowed))})" if allowed else ""),
                field=f"query.{name}",
                allowed=sorted(allowed),
            )
