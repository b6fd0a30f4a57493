"""Broadcast subscribers a caller can make the host hold on to.

Code in a real sandbox writes to stdout as fast as it can (``yes``); the vm
broadcasts every chunk as ``process_output``. A subscriber that never reads used to
make the server buffer the backlog without bound (11.2 GB in 60 s) and stay counted
after it left. Here, against a real ``agentvm serve`` with the real vm actor:

- an SSE subscriber on a raw socket that never reads is dropped (the
  ``agentvm_subscribers`` gauge goes back to 0 while the process still writes),
  the server's RSS stays bounded, and once the client reads it finds the final
  ``event: error`` ``events/subscriber_too_slow``;
- the same over a WebSocket: an error frame and close code 4429;
- a subscriber that leaves (with or without a backlog) is no longer counted.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.server.live import LiveServer, start_server
from tests.support import eventually
from tests.support.docker import docker_client, remove_host

pytestmark = pytest.mark.docker

# The server may hold a few dropped-subscriber buffers (8 MiB each by default) and
# transport buffers; what it must not do is grow with the firehose.
RSS_GROWTH_LIMIT = 256 * 1024 * 1024
FIREHOSE = "yes 'agentvm firehose agentvm firehose agentvm firehose'"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from vm_images.builder import ensure_image

    client = docker_client()
    ensure_image(["common"], client=client)
    host_id = f"subs-{uuid.uuid4().hex[:8]}"
    env = {"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}
    db = tmp_path_factory.mktemp("subscribers") / "host.db"
    live = start_server(db, env=env, registry=None, deadline_s=120)
    yield live
    live.stop()
    try:
        remove_host(client, host_id)
    finally:
        client.close()


@pytest.fixture
def http(host: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=host.url, timeout=120) as client:
        yield client


def _rss(server: LiveServer) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _subscribers(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    m = re.search(r"^agentvm_subscribers(?:\{\})? (\S+)$", text, re.M)
    assert m is not None, text[:2000]
    return int(float(m.group(1)))


def _vm(http: httpx.Client, key: str) -> None:
    resp = http.post(f"/actors/vm/{key}/actions/exec", json={"args": ["true"]})
    assert resp.status_code == 200 and resp.json()["output"]["exit_code"] == 0, resp.text


def _spawn(http: httpx.Client, key: str, command: str) -> int:
    resp = http.post(f"/actors/vm/{key}/actions/spawn", json={"args": [command]})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["output"]["pid"])


def _kill(http: httpx.Client, key: str, pid: int) -> None:
    resp = http.post(f"/actors/vm/{key}/actions/kill_process", json={"args": [pid]})
    assert resp.status_code == 200, resp.text


def _stalled_sse(server: LiveServer, key: str) -> socket.socket:
    """Subscribe over a raw socket with a tiny receive buffer, then never read."""
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    request = f"GET /actors/vm/{key}/events HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def _poll(probe: object, **kwargs: object) -> object:
    return asyncio.run(eventually(probe, **kwargs))  # type: ignore[arg-type]


def test_stalled_sse_subscriber_is_dropped_and_memory_stays_bounded(
    host: LiveServer, http: httpx.Client
) -> None:
    key = f"firehose-{uuid.uuid4().hex[:6]}"
    _vm(http, key)
    assert _subscribers(http) == 0
    baseline = _rss(host)
    sock = _stalled_sse(host, key)
    try:

        async def subscribed() -> int:
            return _subscribers(http)

        _poll(subscribed, predicate=lambda n: n == 1, timeout=30, what="subscribed")
        pid = _spawn(http, key, FIREHOSE)  # the attacker: a sandbox process spewing stdout
        peak = baseline

        async def dropped() -> int:
            nonlocal peak
            peak = max(peak, _rss(host))
            return _subscribers(http)

        _poll(dropped, predicate=lambda n: n == 0, timeout=120, what="subscriber dropped")
        # The firehose keeps going after the drop; the server must not keep its output.
        state = http.post(f"/actors/vm/{key}/actions/list_processes").json()["output"]
        assert any(p["pid"] == pid and p["running"] for p in state), state
        for _ in range(20):
            peak = max(peak, _rss(host))
            assert _subscribers(http) == 0
        print(f"server RSS {baseline / 2**20:.0f} MiB -> peak {peak / 2**20:.0f} MiB")
        assert peak - baseline < RSS_GROWTH_LIMIT, (baseline, peak)

        # Now the client reads: after its backlog comes the final error event.
        sock.settimeout(60)
        seen = b""

        def error_event_complete() -> bool:
            # A recv may end in the middle of the event: wait for its blank line.
            at = seen.rfind(b"event: error")
            return at >= 0 and b"\n\n" in seen[at:] and b"subscriber_too_slow" in seen[at:]

        while not error_event_complete():
            data = sock.recv(1 << 20)
            assert data, f"stream ended without the error event: {seen[-500:]!r}"
            seen = seen[-4096:] + data
        tail = seen[seen.rindex(b"event: error") :]
        payload = json.loads(tail.split(b"data: ", 1)[1].split(b"\n", 1)[0])
        assert payload["error"]["group"] == "events"
        assert payload["error"]["code"] == "subscriber_too_slow"
        _kill(http, key, pid)
    finally:
        sock.close()


def test_stalled_websocket_subscriber_gets_an_error_frame_and_close(
    host: LiveServer, http: httpx.Client
) -> None:
    key = f"ws-firehose-{uuid.uuid4().hex[:6]}"
    _vm(http, key)
    url = host.url.replace("http://", "ws://") + f"/actors/vm/{key}/connect"
    # max_queue=1: the client stops reading its socket after one unread frame.
    with ws_connect(url, max_queue=1, max_size=None) as conn:
        assert '"connected"' in str(conn.recv(timeout=30))

        async def count() -> int:
            return _subscribers(http)

        _poll(count, predicate=lambda n: n == 1, timeout=30, what="subscribed")
        pid = _spawn(http, key, FIREHOSE)
        _poll(count, predicate=lambda n: n == 0, timeout=120, what="subscriber dropped")
        error = None
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = json.loads(conn.recv(timeout=60))
                if frame["type"] == "error":
                    error = frame["error"]
        assert error is not None and error["code"] == "subscriber_too_slow"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    _kill(http, key, pid)


def test_subscribers_that_leave_are_not_counted(host: LiveServer, http: httpx.Client) -> None:
    key = f"leaver-{uuid.uuid4().hex[:6]}"
    _vm(http, key)

    async def count() -> int:
        return _subscribers(http)

    # A quiet actor: no event ever comes to notice the client left by a failed write.
    sock = _stalled_sse(host, key)
    _poll(count, predicate=lambda n: n == 1, timeout=30, what="subscribed")
    sock.close()
    _poll(count, predicate=lambda n: n == 0, timeout=30, what="quiet subscriber removed")

    # A busy actor and a subscriber that leaves with a backlog it never read.
    socks = [_stalled_sse(host, key) for _ in range(3)]
    _poll(count, predicate=lambda n: n == 3, timeout=30, what="subscribed")
    pid = _spawn(http, key, FIREHOSE)
    for s in socks:
        s.close()
    _poll(count, predicate=lambda n: n == 0, timeout=30, what="busy subscribers removed")
    _kill(http, key, pid)


async def test_in_process_subscription_is_bounded_by_bytes_and_count(
    make_engine: Callable[..., Any],
) -> None:
    """The bound lives in the engine's ``Subscription``: a reader that falls behind is
    removed from the actor at once and its next read raises ``SubscriberTooSlow``."""
    from orchestrator.errors import SubscriberTooSlow
    from tests.server.registry import build

    async with make_engine(build()) as engine:
        counter = engine.client().counter.get_or_create("subs")
        actor_id = await engine.resolve("counter", ("subs",), create=True)
        by_count = await engine.subscribe(actor_id, max_events=3)
        by_bytes = await engine.subscribe(actor_id, max_bytes=4096)
        keeps_up = await engine.subscribe(actor_id)
        inst = engine.instances[actor_id]
        assert len(inst.subscribers) == 3
        await counter.announce("big", "x" * 3000)
        assert len(inst.subscribers) == 3 and by_bytes.buffered_bytes > 3000
        assert (await keeps_up.next(timeout=10)).name == "big"
        await counter.announce("big", "x" * 3000)  # by_bytes: over 4096 unread
        assert by_bytes not in inst.subscribers and by_bytes.buffered_bytes == 0
        for _ in range(2):  # by_count: a 4th unread event
            await counter.announce("small", 1)
        assert by_count not in inst.subscribers
        assert inst.subscribers == {keeps_up}
        for dropped in (by_count, by_bytes):
            with pytest.raises(SubscriberTooSlow) as exc:
                await dropped.next(timeout=10)
            assert exc.value.code == "subscriber_too_slow"
        await keeps_up.close()
        assert not inst.subscribers
