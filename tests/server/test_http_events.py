"""Broadcasts over server-sent events and over the WebSocket."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.server.live import LiveServer


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, object]]:
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


def test_sse_streams_broadcasts_with_filter(server: LiveServer, unique: str) -> None:
    base = f"{server.url}/actors/counter/{unique}"
    with (
        httpx.Client(timeout=30) as c,
        c.stream("GET", f"{base}/events", params={"events": "changed,custom"}) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        # subscribed once the headers arrived; now trigger broadcasts
        c.post(f"{base}/actions/announce", json={"args": ["ignored", {"x": 1}]})
        c.post(f"{base}/actions/increment", json={"args": [2]})
        c.post(f"{base}/actions/announce", json={"args": ["custom", {"$bytes": "AAE="}]})
        events = _sse_events(resp.iter_lines())
        assert next(events) == ("changed", {"count": 2})
        assert next(events) == ("custom", {"$bytes": "AAE="})


def test_sse_of_a_workflow_and_stream_ends_on_destroy(server: LiveServer, unique: str) -> None:
    base = f"{server.url}/actors/progress/{unique}"
    with httpx.Client(timeout=30) as c, c.stream("GET", f"{base}/events") as resp:
        c.post(f"{base}/queues/jobs", json={"body": {"value": 7}})
        events = _sse_events(resp.iter_lines())
        first = next(events)
        assert first[0] == "progress_updated" and first[1]["stage"] == "running"
        second = next(events)
        assert second[1]["stage"] == "completed"
        assert c.delete(base).status_code == 200
        assert list(events) == []  # the stream ends


def test_websocket_connect(server: LiveServer, unique: str) -> None:
    ws_url = server.url.replace("http://", "ws://") + f"/actors/counter/{unique}/connect"
    with ws_connect(ws_url) as ws, httpx.Client(base_url=server.url, timeout=30) as c:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "connected" and hello["actor_id"]
        c.post(f"/actors/counter/{unique}/actions/increment", json={"args": [4]})
        c.post(
            f"/actors/counter/{unique}/actions/announce", json={"args": ["b", {"$bytes": "/w=="}]}
        )
        assert json.loads(ws.recv(timeout=30)) == {
            "type": "event",
            "event": "changed",
            "payload": {"count": 4},
        }
        assert json.loads(ws.recv(timeout=30))["payload"] == {"$bytes": "/w=="}


def test_websocket_filter_and_errors(server: LiveServer, unique: str) -> None:
    ws_base = server.url.replace("http://", "ws://")
    with (
        ws_connect(f"{ws_base}/actors/counter/{unique}/connect?events=only") as ws,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        assert json.loads(ws.recv(timeout=30))["type"] == "connected"
        c.post(f"/actors/counter/{unique}/actions/increment", json={"args": [1]})
        c.post(f"/actors/counter/{unique}/actions/announce", json={"args": ["only", 1]})
        assert json.loads(ws.recv(timeout=30))["event"] == "only"
    with ws_connect(f"{ws_base}/actors/nosuch/{unique}/connect") as ws:
        err = json.loads(ws.recv(timeout=30))
        assert err["type"] == "error" and err["error"]["code"] == "unknown_type"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 4404
    with pytest.raises(InvalidStatus):
        ws_connect(f"{ws_base}/nowhere").__enter__()
