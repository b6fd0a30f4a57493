"""Operations: /healthz, /metrics (Prometheus text)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from orchestrator import Engine
from orchestrator.metrics import REGISTRY

from .common import ERRORS, engine_of, json_response, reject_unknown_query
from .models import Health

router = APIRouter(
    tags=["operations"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)]
)

VERSION = "0.1.0"
_STARTED = time.time()


@router.get("/healthz", response_model=Health, summary="Liveness (no token needed)")
async def healthz(request: Request) -> Response:
    engine = engine_of(request)
    return json_response(
        {
            "status": "ok" if engine.running else "stopping",
            "version": VERSION,
            "uptime_s": round(time.time() - _STARTED, 3),
            "actors_awake": engine.inspector.live_stats().awake,
        },
        status=200 if engine.running else 503,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    return Response(REGISTRY.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def register_engine_gauges(engine: Engine) -> None:
    """Scrape-time gauges of this engine (re-registering replaces an older engine's)."""

    def awake() -> Iterable[tuple[dict[str, str], float]]:
        counts = engine.inspector.live_stats().awake_by_name
        return [({"actor": name}, n) for name, n in sorted(counts.items())]

    def depth() -> Iterable[tuple[dict[str, str], float]]:
        live = engine.inspector.live_stats()
        out: list[tuple[dict[str, str], float]] = []
        for name in sorted(live.pending_by_name):
            out.append(({"actor": name, "state": "pending"}, live.pending_by_name[name]))
            out.append(({"actor": name, "state": "in_flight"}, live.in_flight_by_name[name]))
        return out

    def subscribers() -> Iterable[tuple[dict[str, str], float]]:
        return [({}, engine.inspector.live_stats().subscribers)]

    REGISTRY.gauge("agentvm_actors_awake", "Actors in memory, by actor type.", awake)
    REGISTRY.gauge(
        "agentvm_queue_depth", "Queue messages of awake actors, by actor type and state.", depth
    )
    REGISTRY.gauge(
        "agentvm_subscribers", "Open broadcast subscriptions (SSE/WebSocket).", subscribers
    )
