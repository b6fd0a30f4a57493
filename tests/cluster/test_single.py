"""One host on SQLite is a cluster of one: ``GET /cluster`` answers ``mode: "single"``
and nothing of the cluster runtime runs (no member, no forwarding middleware)."""

from __future__ import annotations

from pathlib import Path

import httpx

from host.server import create_app
from orchestrator import Engine
from tests.cluster.registry import build


async def test_cluster_route_on_sqlite_is_single(tmp_path: Path) -> None:
    engine = Engine(build(), db=str(tmp_path / "one.db"), host_id="solo")
    async with engine:
        assert engine.cluster is None
        app = create_app(engine, token="")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            await c.post("/actors/counter/x/actions/increment", json={"args": [1]})
            r = await c.get("/cluster")
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["mode"] == "single"
    assert view["host_id"] == "solo"
    assert view["lease_ttl"] is None
    [host] = view["hosts"]
    assert host["alive"] is True and host["leases"] == 0
    assert host["load"] == {"actors": 1}
