"""``GET /cluster``: the hosts sharing this host's database, their leases, load and
health (orchestrator/cluster). One SQLite host answers itself, ``mode: "single"``."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from .common import ERRORS, engine_of, json_response, reject_unknown_query

router = APIRouter(
    tags=["operations"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)]
)


class ClusterHost(BaseModel):
    host_id: str
    url: str | None = Field(description="where the other hosts forward its actors' requests")
    engine_id: str = Field("", description="the Docker engine this host drives")
    started_at: float | None = None
    heartbeat_at: float | None = Field(None, description="last heartbeat (database clock)")
    heartbeat_age_s: float | None = Field(None, description="seconds since the last heartbeat")
    alive: bool
    stopped: bool = False
    leases: int = Field(description="actors this host owns")
    load: dict[str, Any] = Field(
        default_factory=dict, description="awake actors, running sandboxes, rss_mib"
    )


class ClusterView(BaseModel):
    mode: Literal["single", "cluster"]
    host_id: str = Field(description="the host that answered")
    lease_ttl: float | None = None
    hosts: list[ClusterHost]


@router.get("/cluster", response_model=ClusterView, summary="Hosts, leases, load and health")
async def get_cluster(request: Request) -> Response:
    engine = engine_of(request)
    member = engine.cluster
    if member is None:
        live = engine.inspector.live_stats()
        host = {
            "host_id": engine.config.host_id or "local",
            "url": None,
            "engine_id": "",
            "alive": engine.running,
            "stopped": not engine.running,
            "leases": 0,
            "load": {"actors": live.awake},
        }
        return json_response(
            {"mode": "single", "host_id": host["host_id"], "lease_ttl": None, "hosts": [host]}
        )
    records = await member.store.list_hosts(member.ttl)
    now = time.time()
    hosts = []
    for h in records:
        load = h.load if isinstance(h.load, dict) else {}
        if h.host_id == member.host_id:
            load = member.load()
        hosts.append(
            {
                "host_id": h.host_id,
                "url": h.url or None,
                "engine_id": h.engine_id,
                "started_at": h.started_at,
                "heartbeat_at": h.heartbeat_at,
                # The database's clock vs ours: only indicative across machines.
                "heartbeat_age_s": round(max(0.0, now - h.heartbeat_at), 3),
                "alive": h.alive,
                "stopped": h.stopped,
                "leases": h.leases,
                "load": load,
            }
        )
    hosts.sort(key=lambda h: (not h["alive"], h["host_id"]))
    return json_response(
        {"mode": "cluster", "host_id": member.host_id, "lease_ttl": member.ttl, "hosts": hosts}
    )
