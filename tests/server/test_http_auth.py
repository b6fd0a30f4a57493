"""Bearer token: required when set; refusing to start off loopback without one."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from orchestrator import AgentVMError, create_client
from tests.server.live import agentvm, start_server


def test_token_required(tmp_path: Path) -> None:
    live = start_server(tmp_path / "auth.db", token="s3cret")
    try:
        url = live.url
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no token
        for path in ("/actors", "/openapi.json", "/metrics", "/actors/counter/k/state"):
            resp = httpx.get(f"{url}{path}")
            assert resp.status_code == 401, path
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(f"{url}/actors", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = httpx.get(f"{url}/actors", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        ws = url.replace("http://", "ws://") + "/actors/counter/k/connect"
        with pytest.raises(InvalidStatus):
            ws_connect(ws).__enter__()
        with ws_connect(ws, additional_headers={"Authorization": "Bearer s3cret"}) as conn:
            assert '"connected"' in str(conn.recv(timeout=30))

        import asyncio

        async def client_calls() -> None:
            async with create_client(url, token="s3cret") as client:
                assert await client.counter.get_or_create("k").increment(1) == 1
            async with create_client(url, token="wrong") as client:
                with pytest.raises(AgentVMError) as exc:
                    await client.counter.get_or_create("k").increment(1)
                assert exc.value.http_status == 401

        asyncio.run(client_calls())
        res = agentvm(
            "call", "counter", "k", "get_count", "--url", url, env={"AGENTVM_TOKEN": "s3cret"}
        )
        assert res.returncode == 0 and res.stdout.strip() == b"1", res.stderr
        res = agentvm("ps", "--url", url, env={"AGENTVM_TOKEN": ""})
        assert res.returncode == 1 and b"unauthorized" in res.stderr
    finally:
        assert live.stop() == 0


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "example.org"])
def test_refuses_non_loopback_without_token(tmp_path: Path, bind: str) -> None:
    started = time.monotonic()
    res = agentvm(
        "serve",
        "--db",
        str(tmp_path / "x.db"),
        "--bind",
        bind,
        "--port",
        "0",
        env={"AGENTVM_TOKEN": ""},
    )
    assert res.returncode == 2
    assert b"refusing to listen" in res.stderr and b"AGENTVM_TOKEN" in res.stderr
    assert not (tmp_path / "x.db").exists()
    assert time.monotonic() - started < 60


def test_non_loopback_with_token_starts(tmp_path: Path) -> None:
    live = start_server(tmp_path / "any.db", token="t", args=("--bind", "0.0.0.0"))
    try:
        port = live.url.rsplit(":", 1)[1]
        resp = httpx.get(f"http://127.0.0.1:{port}/actors", headers={"Authorization": "Bearer t"})
        assert resp.status_code == 200
    finally:
        assert live.stop() == 0
