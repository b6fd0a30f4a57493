"""A plain queue send takes the fast path (host/server/fastpath.py); the same request
with a query parameter goes through the router. Both must answer alike, and the
outer middleware (browser guard, body limit, metrics) still applies to the fast one."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from tests.server.live import LiveServer

# (path under /actors, JSON body): each sent both ways.
CASES: list[tuple[str, Any]] = [
    ("counter/{u}/queues/jobs", {"body": {"x": 1}}),
    ("counter/{u}/queues/jobs", {}),
    ("counter/{u}/queues/jobs", {"body": {"$bytes": "aGk="}}),
    ("counter/{u}/queues/jobs", {"body": {"$bytes": "not base64!"}}),
    ("counter/{u}/queues/nope", {"body": 1}),
    ("nosuch/{u}/queues/jobs", {"body": 1}),
    ("counter/%ZZ/queues/jobs", {"body": 1}),
    ("counter/{u}/queues/bad%2", {"body": 1}),
    ("counter/{u}/queues/jobs", {"body": 1, "extra": True}),
    ("counter/{u}/queues/jobs", [1]),
]


def _shape(resp: httpx.Response) -> tuple[int, Any]:
    data = resp.json()
    if resp.status_code == 200:
        return 200, (sorted(data), data["status"])  # message ids differ
    return resp.status_code, data


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p}:{b}" for p, b in CASES])
def test_fast_and_routed_sends_answer_alike(
    http: httpx.Client, unique: str, path: str, body: Any
) -> None:
    url = "/actors/" + path.format(u=unique)
    fast = http.post(url, json=body)
    routed = http.post(url + "?create=true", json=body)
    assert _shape(fast) == _shape(routed), (fast.text, routed.text)
    assert fast.status_code < 500


def test_fast_sends_are_queued_in_order_and_timed_under_the_route(
    http: httpx.Client, unique: str
) -> None:
    base = f"/actors/counter/{unique}"
    ids = [http.post(f"{base}/queues/jobs", json={"body": {"n": i}}).json() for i in range(5)]
    assert [r["status"] for r in ids] == ["queued"] * 5
    assert [r["message_id"] for r in ids] == sorted(r["message_id"] for r in ids)
    messages = http.get(f"{base}/inspector/queue").json()["messages"]
    assert [m["body"] for m in messages] == [{"n": i} for i in range(5)]
    metrics = http.get("/metrics").text
    assert 'route="/actors/{name}/{key}/queues/{queue}",status="200"' in metrics


def test_a_cross_site_browser_send_is_refused_before_the_fast_path(
    http: httpx.Client, unique: str
) -> None:
    base = f"/actors/counter/{unique}"
    evil = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    resp = http.post(f"{base}/queues/jobs", json={"body": "pwned"}, headers=evil)
    assert resp.status_code == 403
    # Nothing was queued (the actor was not even created).
    assert http.get(base).status_code == 404


def _raw(url: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes
    (or goes quiet for 5 s)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before taking it all
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def test_a_body_longer_than_its_content_length_is_never_one_request(
    server: LiveServer, unique: str
) -> None:
    """The body limit no longer counts a request with a Content-Length (the parser
    delivers exactly that many bytes): the attacker's extra megabytes must not reach
    the app as a body, whether after a small Content-Length or chunked beside one."""
    path = f"/actors/counter/{unique}/queues/jobs"
    big = json.dumps({"body": "x" * (2 * 1024 * 1024)}).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    smuggled = _raw(server.url, (head + "Content-Length: 11\r\n\r\n").encode() + big)
    assert not smuggled.startswith(b"HTTP/1.1 200"), smuggled[:200]
    chunk = f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n"
    both = head + "Content-Length: 11\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = _raw(server.url, both.encode() + chunk)
    assert b" 200 " not in answer.split(b"\r\n", 1)[0], answer[:200]
    # Nothing was queued, and the server still answers.
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/healthz").status_code == 200
        queue = http.get(f"/actors/counter/{unique}/inspector/queue")
        assert queue.status_code == 404 or queue.json()["messages"] == []
