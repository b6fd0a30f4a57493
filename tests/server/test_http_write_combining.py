"""The server's write-combining transport (host/server/run.py), seen from a raw socket.

It delays every write to the end of the loop tick. What could go wrong, and is
checked here: a response cut short when the connection is closed in the same tick
as the last write (``Connection: close``), a keep-alive response split or
reordered, an interim ``100 Continue`` held back while the client waits for it.
(That head and body leave in one ``send`` is not observable from the client: its
receive buffer joins segments too.)"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from tests.server.live import LiveServer


def _connect(server: LiveServer) -> socket.socket:
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def _request(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode()


def test_keep_alive_responses_arrive_whole_and_in_order(server: LiveServer, unique: str) -> None:
    body = json.dumps({"body": {"n": 1}}).encode()
    with _connect(server) as sock:
        for _ in range(3):  # and again on the same keep-alive connection
            sock.sendall(_request(f"/actors/counter/{unique}/queues/jobs", body) + body)
            first = sock.recv(65536)
            head, sep, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), first
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(rest) < length:
                rest += sock.recv(65536)
            assert sep and len(rest) == length
            assert json.loads(rest)["status"] == "queued"


def test_connection_close_sends_the_whole_response_first(server: LiveServer, unique: str) -> None:
    body = json.dumps({"body": {"n": 3}}).encode()
    with _connect(server) as sock:
        path = f"/actors/counter/{unique}/queues/jobs"
        sock.sendall(_request(path, body, "Connection: close\r\n") + body)
        data = b""
        while chunk := sock.recv(65536):  # until the server closes
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert json.loads(rest)["status"] == "queued"


def test_expect_100_continue_is_answered(server: LiveServer, unique: str) -> None:
    body = json.dumps({"body": {"n": 2}}).encode()
    with _connect(server) as sock:
        path = f"/actors/counter/{unique}/queues/jobs"
        sock.sendall(_request(path, body, "Expect: 100-continue\r\n"))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        data = b""
        while b'"queued"' not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data
