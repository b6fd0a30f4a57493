"""``GET /runs/events``: server-sent events of runs changing, across actors.

The engine has no global run broadcast, so each stream reads the run list through
the engine's public API (``list_runs``) every ``POLL_SECONDS`` and sends what
changed: first ``event: runs`` with every run (``{"runs": [...], "full": true}``),
then one ``event: runs`` per poll that saw a run created or changed
(``{"runs": [changed], "full": false}``). A ``: ping`` comment keeps proxies from
closing an idle stream. At most ``MAX_STREAMS`` streams are open at once (429
beyond), so the polling cost is bounded; the console's runs page uses it.

``GET /runs/queues``: the queues whose messages are runs, with the JSON Schema of
their body, so a form (the console's "start a run") can be drawn from it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response
from starlette.types import Send

from orchestrator import Engine
from orchestrator.errors import AgentVMError

from .common import ERRORS, engine_of, json_response, reject_unknown_query
from .routes_events import SseResponse

router = APIRouter(tags=["runs"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])

POLL_SECONDS = 1.0
PING_SECONDS = 15.0
MAX_STREAMS = 32
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode


class TooManyStreams(AgentVMError):
    """Every run-event stream slot is taken."""

    group = "request"
    code = "too_many_streams"
    http_status = 429


class _Slots:
    def __init__(self) -> None:
        self.open = 0


_slots = _Slots()


def _fingerprint(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run["status"], run["started_at"], run["finished_at"], _dumps(run["meta"]))


class RunEventStream(SseResponse):
    """``text/event-stream`` of run changes; ends its poller when the client leaves."""

    def __init__(self, engine: Engine, status: str | None, name: str | None) -> None:
        super().__init__()
        self.engine = engine
        self.status = status
        self.name = name

    async def _closed(self) -> None:
        _slots.open -= 1

    async def _runs(self) -> list[dict[str, Any]]:
        runs = await self.engine.list_runs(None, status=self.status, name=self.name)
        return [r.model_dump() for r in runs]

    async def _pump(self, send: Send) -> None:
        async def chunk(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        runs = await self._runs()
        seen = {(r["actor_id"], r["run_id"]): _fingerprint(r) for r in runs}
        await chunk(_event({"runs": runs, "full": True}))
        quiet_since = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            runs = await self._runs()
            changed = []
            now_seen = {}
            for r in runs:
                ident = (r["actor_id"], r["run_id"])
                now_seen[ident] = fp = _fingerprint(r)
                if seen.get(ident) != fp:
                    changed.append(r)
            seen = now_seen
            if changed:
                await chunk(_event({"runs": changed, "full": False}))
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= PING_SECONDS:
                await chunk(b": ping\n\n")
                quiet_since = time.monotonic()


def _event(payload: dict[str, Any]) -> bytes:
    return b"event: runs\ndata: " + _dumps(payload).encode() + b"\n\n"


RunStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


@router.get("/runs/queues", summary="Queues whose messages are runs, with their body's schema")
async def run_queues(request: Request) -> Response:
    engine = engine_of(request)
    found: list[dict[str, Any]] = []
    for name, definition in sorted(engine.registry.actors.items()):
        for queue, spec in sorted(definition.queues.items()):
            if spec.run is None:
                continue
            schema = spec.body.model_json_schema() if spec.body is not None else None
            found.append(
                {"name": name, "queue": queue, "description": spec.description, "schema": schema}
            )
    return json_response({"queues": found})


@router.get(
    "/runs/events",
    summary="Server-sent events of runs created or changed, across actors",
    response_class=RunEventStream,
    status_code=200,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def run_events(
    request: Request,
    status: RunStatus | None = Query(None, description="only runs with this status"),
    name: str | None = Query(None, description="only runs of this actor type"),
) -> RunEventStream:
    if _slots.open >= MAX_STREAMS:
        raise TooManyStreams(
            f"at most {MAX_STREAMS} run-event streams may be open at once", limit=MAX_STREAMS
        )
    _slots.open += 1
    return RunEventStream(engine_of(request), status, name)
