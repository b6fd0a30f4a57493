"""A browser's WebSocket carries the token as a subprotocol (it cannot set an
``Authorization`` header): ``agentvm.bearer.<base64url token>`` beside ``agentvm``.
Checked like the header, stripped before any route sees it (a preview proxy would
otherwise hand it to the sandbox), answered with ``agentvm``."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from host.server.middleware import BearerAuthMiddleware
from tests.server.live import start_server

TOKEN = "s3cret-ws-token"


def offer(token: str) -> list[Any]:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return ["agentvm", f"agentvm.bearer.{encoded}"]


def test_token_as_subprotocol_over_a_live_server(tmp_path: Path) -> None:
    live = start_server(tmp_path / "ws.db", token=TOKEN)
    try:
        ws = live.url.replace("http://", "ws://") + "/actors/counter/k/connect"
        with ws_connect(ws, subprotocols=offer(TOKEN), open_timeout=30) as conn:
            assert conn.subprotocol == "agentvm"
            assert '"connected"' in str(conn.recv(timeout=30))
        # Guessed, empty, doubled, or the right one without its prefix: refused at
        # the handshake.
        bad = [
            offer("wrong"),
            offer(""),
            offer(TOKEN + "x"),
            [*offer(TOKEN), offer("wrong")[1]],
            ["agentvm", base64.urlsafe_b64encode(TOKEN.encode()).decode()],
            ["agentvm", "agentvm.bearer.%%%"],
        ]
        for protocols in bad:
            with pytest.raises(InvalidStatus) as refused:
                ws_connect(ws, subprotocols=protocols, open_timeout=30).__enter__()
            assert refused.value.response.status_code == 403, protocols
        # A page of another site that somehow had the token is still refused by
        # the browser guard (its Origin).
        with pytest.raises(InvalidStatus) as foreign:
            ws_connect(
                ws,
                subprotocols=offer(TOKEN),
                origin="http://evil.example",
                open_timeout=30,
            ).__enter__()
        assert foreign.value.response.status_code == 403
        # Plain HTTP does not take the token from that header.
        header = {"Sec-WebSocket-Protocol": ", ".join(offer(TOKEN))}
        assert httpx.get(f"{live.url}/actors", headers=header).status_code == 401
    finally:
        assert live.stop() == 0


def test_the_route_never_sees_the_token() -> None:
    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "websocket.accept"})

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    protocols = [*offer(TOKEN), "chat"]
    scope = {
        "type": "websocket",
        "path": "/vms/x/ports/8000.cap/ws",
        "subprotocols": protocols,
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"sec-websocket-protocol", ", ".join(protocols).encode()),
        ],
    }
    asyncio.run(BearerAuthMiddleware(app, TOKEN)(scope, receive, send))
    (inner,) = seen
    assert inner["subprotocols"] == ["agentvm", "chat"]
    assert TOKEN not in repr(inner)
    assert base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=") not in repr(inner)
    assert dict(inner["headers"])[b"sec-websocket-protocol"] == b"agentvm, chat"
    assert sent == [{"type": "websocket.accept", "subprotocol": "agentvm"}]
