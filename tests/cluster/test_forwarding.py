"""Two real hosts on one PostgreSQL: a request reaches an actor whichever host it
arrives at (forwarded to the owner), new actors are placed on the least-loaded host,
``GET /cluster`` and ``agentvm cluster`` show both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.hosts import (
    FORWARDED,
    TOKEN,
    Host,
    all_alive,
    cluster_view,
    lease_owner,
    start_hosts,
    stop_hosts,
    wait_for,
)
from tests.server.live import agentvm
from tests.support.postgres import PgServer


@pytest.fixture(scope="module")
def cluster(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Host, Host]]:
    db = pg_server.create_database()
    # No takeover here: a ttl that a beat delayed by a loaded machine does not outlast.
    hosts = start_hosts(db, ["host-a", "host-b"], tmp_path_factory.mktemp("fwd"), ttl=3.0)
    try:
        all_alive(hosts)
        yield db, hosts[0], hosts[1]
    finally:
        stop_hosts(hosts)


def _create_on(host: Host, name: str, key: str) -> str:
    """Create an actor on ``host`` itself (a request marked as forwarded is served
    where it lands: no placement)."""
    with host.http() as c:
        r = c.post(f"/actors/{name}/{key}", json={}, headers={FORWARDED: "test"})
        assert r.status_code in (200, 201), r.text
        return str(r.json()["actor_id"])


def _call(host: Host, name: str, key: str, action: str, *args: Any) -> httpx.Response:
    with host.http() as c:
        return c.post(f"/actors/{name}/{key}/actions/{action}", json={"args": list(args)})


def test_call_send_and_events_are_forwarded_to_the_owner(cluster: tuple[str, Host, Host]) -> None:
    db, a, b = cluster
    actor_id = _create_on(a, "counter", "fwd")
    assert lease_owner(db, actor_id) == "host-a"

    # A call arriving at B runs on A (the owner), and answers as if B had served it.
    r = _call(b, "counter", "fwd", "increment", 2)
    assert r.status_code == 200, r.text
    assert r.json()["output"] == 2
    assert _call(b, "counter", "fwd", "where").json()["output"] == "host-a"
    assert lease_owner(db, actor_id) == "host-a"

    # A send through B lands in A's queue.
    with b.http() as c:
        r = c.post("/actors/counter/fwd/queues/jobs", json={"body": {"n": 1}})
        assert r.status_code in (200, 202), r.text
        q = c.get("/actors/counter/fwd/inspector/queue").json()
    assert any(m.get("body") == {"n": 1} for m in q["messages"]), q

    # An event stream opened at B is A's stream, streamed through B.
    with (
        b.http() as c,
        c.stream("GET", "/actors/counter/fwd/events") as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert _call(a, "counter", "fwd", "increment", 3).json()["output"] == 5
        data = None
        for line in lines:
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if isinstance(data, dict) and data.get("count") == 5:
                    break
        assert data == {"count": 5, "host": "host-a"}


def test_a_raw_upload_is_forwarded_whole(cluster: tuple[str, Host, Host]) -> None:
    """``PUT /vms/{key}/files/...`` (a raw body, not JSON) through a non-owner."""
    _, a, b = cluster
    _create_on(a, "vm", "up")
    data = bytes(range(256)) * 4096  # 1 MiB
    with b.http() as c:
        r = c.put(
            "/vms/up/files/home/user/blob.bin",
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["size"] == len(data)
    with a.http() as c:
        assert c.get("/vms/up/files/home/user/blob.bin").content == data


def test_in_process_calls_are_forwarded_to_the_owner(cluster: tuple[str, Host, Host]) -> None:
    """Actor code on B calling an actor A owns: the in-process client re-sends the
    call to A over HTTP (with the cluster's token)."""
    _, a, b = cluster
    _create_on(a, "counter", "inproc")
    _create_on(b, "relay", "r1")
    r = _call(b, "relay", "r1", "bump", "inproc")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == {"count": 1, "counter_host": "host-a", "relay_host": "host-b"}


def test_a_forwarded_request_is_never_forwarded_again(cluster: tuple[str, Host, Host]) -> None:
    """A request that already went through a host and still meets another owner gets
    503 owner_moving with Retry-After, not a second hop (no loops)."""
    _, a, b = cluster
    _create_on(a, "counter", "loop")
    with b.http() as c:
        r = c.post(
            "/actors/counter/loop/actions/increment", json={"args": [1]}, headers={FORWARDED: "x"}
        )
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert (err["group"], err["code"]) == ("cluster", "owner_moving")
    assert err["metadata"]["owner_host_id"] == "host-a"
    # The actor was not touched.
    assert _call(a, "counter", "loop", "get_count").json()["output"] == 0


def _ws(host: Host, path: str, **kw: Any) -> Any:
    from websockets.sync.client import connect

    return connect(host.url.replace("http://", "ws://") + path, open_timeout=10, **kw)


def test_a_websocket_through_a_non_owner_is_proxied_to_the_owner(
    cluster: tuple[str, Host, Host],
) -> None:
    """``/connect`` opened at B for an actor A owns: B proxies it to A, with the
    console's token subprotocol; A's broadcasts reach the client through B, and
    the owner's close reaches it too."""
    import base64

    from websockets.exceptions import ConnectionClosed

    db, a, b = cluster
    actor_id = _create_on(a, "counter", "ws")
    bearer = "agentvm.bearer." + base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")
    with _ws(b, "/actors/counter/ws/connect", subprotocols=["agentvm", bearer]) as ws:
        assert ws.subprotocol == "agentvm"
        assert json.loads(ws.recv(timeout=10)) == {"type": "connected", "actor_id": actor_id}
        assert _call(a, "counter", "ws", "increment", 4).json()["output"] == 4
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "event" and frame["event"] == "changed"
        assert frame["payload"] == {"count": 4, "host": "host-a"}
        ws.send("ignored by the route")  # client frames travel to the owner too
    assert lease_owner(db, actor_id) == "host-a"

    # With the header token as well; the owner closing (the actor is destroyed) is
    # passed through as a close, not a dropped connection.
    with _ws(
        b, "/actors/counter/ws/connect", additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "connected"
        with a.http() as c:
            assert c.delete("/actors/counter/ws").status_code in (200, 202, 204)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.close_code is not None and ws.close_code != 1006


def test_a_forwarded_websocket_is_never_forwarded_again(cluster: tuple[str, Host, Host]) -> None:
    """A socket already forwarded once that meets another owner closes with 4503
    (owner moving) after an error frame: no second hop."""
    from websockets.exceptions import ConnectionClosed

    _, a, b = cluster
    _create_on(a, "counter", "wsloop")
    headers = {"Authorization": f"Bearer {TOKEN}", FORWARDED: "x"}
    with _ws(b, "/actors/counter/wsloop/connect", additional_headers=headers) as ws:
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "error"
        assert frame["error"]["code"] == "not_owner"
        assert frame["error"]["metadata"]["owner_host_id"] == "host-a"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4503


def test_the_owner_url_never_comes_from_the_request(cluster: tuple[str, Host, Host]) -> None:
    """The attacker names its own listener in every header a proxy might trust: the
    socket still goes to the owner the lease table names, and the listener sees no
    connection."""
    import socket

    _, a, b = cluster
    actor_id = _create_on(a, "counter", "wshostile")
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    evil = f"127.0.0.1:{trap.getsockname()[1]}"
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Forwarded-Host": evil,
        "Forwarded": f"host={evil}",
        "X-Agentvm-Owner-Url": f"http://{evil}",
        "X-Original-URL": f"http://{evil}/actors/counter/wshostile/connect",
    }
    try:
        with _ws(b, "/actors/counter/wshostile/connect", additional_headers=headers) as ws:
            assert json.loads(ws.recv(timeout=10)) == {"type": "connected", "actor_id": actor_id}
        with pytest.raises(BlockingIOError):
            trap.accept()
    finally:
        trap.close()


def test_new_actors_go_to_the_least_loaded_host(cluster: tuple[str, Host, Host]) -> None:
    db, a, b = cluster
    # Load A with awake actors until both hosts' views say A is busier than B.
    for i in range(4):
        _create_on(a, "counter", f"load-{i}")

    def loads() -> dict[str, int]:
        view = cluster_view(a)
        return {h["host_id"]: h["load"].get("actors", 0) for h in view["hosts"]}

    wait_for(loads, lambda v: v.get("host-a", 0) > v.get("host-b", 0) + 2, what="A busier")
    # B's own view of A's load comes from A's heartbeat, read at B's beat.
    wait_for(
        lambda: {h["host_id"]: h["load"].get("actors", 0) for h in cluster_view(b)["hosts"]},
        lambda v: v.get("host-a", 0) > v.get("host-b", 0) + 2,
        what="B sees A busier",
    )
    with a.http() as c:
        r = c.post("/actors/counter/placed", json={})
    assert r.status_code in (200, 201), r.text
    actor_id = r.json()["actor_id"]
    assert lease_owner(db, actor_id) == "host-b"
    assert _call(a, "counter", "placed", "where").json()["output"] == "host-b"

    # An actor created by another actor's code stays with its creator (locality).
    _create_on(a, "relay", "local")
    r = _call(a, "relay", "local", "make", "made-by-relay")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == "host-a"


def test_cluster_route_and_cli(cluster: tuple[str, Host, Host], tmp_path: Path) -> None:
    _, a, b = cluster
    _create_on(a, "counter", "listed")
    view = cluster_view(b)
    assert view["mode"] == "cluster"
    assert view["host_id"] == "host-b"
    assert view["lease_ttl"] == 3.0
    by_id = {h["host_id"]: h for h in view["hosts"]}
    assert by_id["host-a"]["alive"] and by_id["host-b"]["alive"]
    assert by_id["host-a"]["url"] == a.url and by_id["host-b"]["url"] == b.url
    assert by_id["host-a"]["leases"] >= 1
    assert {"actors", "sandboxes", "rss_mib"} <= set(by_id["host-b"]["load"])

    env = {"AGENTVM_TOKEN": TOKEN}
    res = agentvm("cluster", "--json", "--url", a.url, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {h["host_id"] for h in out["hosts"]} >= {"host-a", "host-b"}
    res = agentvm("cluster", "--url", a.url, env=env)
    assert res.returncode == 0, res.stderr
    text = res.stdout.decode()
    assert "* host-a" in text and "host-b" in text and "alive" in text


async def _proxy_to(owner_url: str | None) -> tuple[Any, str]:
    """An in-process server whose one WebSocket route meets ``NotOwner`` naming
    ``owner_url`` (uvicorn with the same WebSocket protocol as ``agentvm serve``)."""
    import asyncio
    import socket
    from types import SimpleNamespace

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from host.server.forward_ws import proxy_websocket
    from orchestrator.errors import NotOwner

    async def route(websocket: WebSocket) -> None:
        exc = NotOwner("owned elsewhere", actor_id="x", owner_host_id="o", owner_url=owner_url)
        await proxy_websocket(websocket, exc)

    app = Starlette(routes=[WebSocketRoute("/ws", route)])
    app.state.engine = SimpleNamespace(cluster=None)
    app.state.settings = SimpleNamespace(token=None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    from tests.support import eventually

    await eventually(lambda: asyncio.sleep(0, server.started), what="proxy listening")
    port = sock.getsockname()[1]
    return (server, task), f"ws://127.0.0.1:{port}/ws"


async def _stop(handle: Any) -> None:
    server, task = handle
    server.should_exit = True
    await task


async def test_a_client_that_never_reads_stalls_the_owner() -> None:
    """The owner floods 256 MiB at a client that never reads: the proxy holds a few
    frames and socket buffers, then the owner's sends wait (back-pressure through
    the proxy) instead of the proxy buffering the flood."""
    import asyncio

    from websockets.asyncio.server import ServerConnection, serve

    from tests.support import eventually

    chunk = b"x" * (256 * 1024)
    sent = [0]

    async def flood(conn: ServerConnection) -> None:
        for _ in range(1024):
            await conn.send(chunk)
            sent[0] += len(chunk)

    async with serve(flood, "127.0.0.1", 0, max_size=None) as owner:
        port = owner.sockets[0].getsockname()[1]
        handle, url = await _proxy_to(f"http://127.0.0.1:{port}")
        try:
            # A raw socket that completes the handshake and never reads a byte.
            reader, writer = await asyncio.open_connection("127.0.0.1", int(url.split(":")[2][:-3]))
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await writer.drain()
            await eventually(lambda: asyncio.sleep(0, sent[0]), lambda n: n > 0)
            samples: list[int] = []

            async def stalled() -> bool:
                await asyncio.sleep(0.5)
                samples.append(sent[0])
                return len(samples) > 2 and samples[-1] == samples[-3]

            await eventually(stalled, timeout=60, what="the owner's sends wait")
            assert sent[0] < 64 * 1024 * 1024, sent[0]
            # Reading again resumes it: the stream was only paused.
            before = sent[0]
            await asyncio.wait_for(reader.readexactly(before + 4 * 1024 * 1024), 30)
            await eventually(lambda: asyncio.sleep(0, sent[0]), lambda n: n > before)
            writer.transport.abort()
        finally:
            await _stop(handle)


async def test_an_unreachable_owner_closes_with_4421() -> None:
    """Nothing listens at the owner's address: the client gets an error frame naming
    it and close code 4421 (within the connect deadline), not a hang."""
    import socket

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    owner_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there now
    handle, url = await _proxy_to(owner_url)
    try:
        async with connect(url) as client:
            frame = json.loads(await client.recv())
            assert frame["error"]["code"] == "not_owner"
            assert frame["error"]["metadata"]["owner_url"] == owner_url
            with pytest.raises(ConnectionClosed):
                await client.recv()
            assert client.close_code == 4421
            assert owner_url in (client.close_reason or "")
    finally:
        await _stop(handle)
