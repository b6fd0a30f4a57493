"""The attacker: runs *inside* a sandbox (python3, stdlib only) against the LLM gateway.

Uploaded by tests/security/test_gateway_attacks.py and run with ``exec``/``spawn``.
Usage: ``python3 gateway_attack.py <mode> <json args>``; prints one JSON line.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from typing import Any

PORT = 4141
UNIX = "/run/agentvm/gateway.sock"
GIVE_UP = 60.0  # only a failure bound: a correct gateway answers long before


def connect(unix: bool = False) -> socket.socket:
    if unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(UNIX)
    else:
        s = socket.create_connection(("127.0.0.1", PORT))
    return s


def read_all(s: socket.socket, limit: float = GIVE_UP) -> bytes:
    """Everything until the peer closes (or a whole response with content-length)."""
    s.settimeout(limit)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return out
    except (TimeoutError, ConnectionError, OSError):
        pass
    return out


def status(raw: bytes) -> int:
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def probe(args: dict[str, Any]) -> dict[str, Any]:
    """Send each raw request on its own connection; report each status."""
    out = []
    for item in args["requests"]:
        s = connect(item.get("unix", False))
        s.sendall(item["raw"].encode("latin-1"))
        raw = read_all(s)
        s.close()
        out.append({"status": status(raw), "head": raw[:300].decode("latin-1")})
    return {"results": out}


def flood(args: dict[str, Any]) -> dict[str, Any]:
    """Open ``n`` connections, send a request head and ``body`` bytes of a bigger
    declared body on each, keep them open; count the ones refused with 503."""
    socks: list[socket.socket] = []
    refused = 0
    head = (
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {args['declared']}\r\n\r\n"
    ).encode()
    chunk = b"x" * 65536
    for _ in range(args["n"]):
        s = connect()
        socks.append(s)
        try:
            s.sendall(head)
            sent = 0
            while sent < args["body"]:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
    # The refused ones got a 503 and were closed: read what each has.
    deadline = time.monotonic() + GIVE_UP
    pending = list(socks)
    answered: set[int] = set()
    while pending and time.monotonic() < deadline:
        if len(socks) - len(answered) <= args.get("expect_open", -1):
            break
        ready, _, _ = select.select(pending, [], [], 0.5)
        for s in ready:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                refused += 1
            answered.add(id(s))
            pending.remove(s)
    print(json.dumps({"ready": True, "refused": refused, "open": len(socks) - len(answered)}))
    sys.stdout.flush()
    sys.stdin.readline()  # hold every connection until the test says so
    for s in socks:
        s.close()
    return {"done": True}


def slow(args: dict[str, Any]) -> dict[str, Any]:
    """Slowloris: a head trickled a line at a time; an idle connection; a stalled
    body. Each reports whether (and with what) the server ended it."""
    results: dict[str, Any] = {}

    def trickle() -> None:
        s = connect()
        s.sendall(b"POST /v1/messages HTTP/1.1\r\n")
        got = b""
        s.settimeout(0.2)
        end = time.monotonic() + GIVE_UP
        while time.monotonic() < end:
            try:
                s.sendall(b"x-slow: 1\r\n")
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            except TimeoutError:
                continue
            except OSError:
                break
        got += read_all(s, 5.0)
        results["trickle"] = {"status": status(got), "ended": time.monotonic() < end}

    def idle() -> None:
        s = connect()
        got = read_all(s)
        results["idle"] = {"status": status(got), "bytes": len(got)}

    def stalled_body() -> None:
        s = connect()
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        got = read_all(s)
        results["stalled_body"] = {"status": status(got)}

    threads = [threading.Thread(target=f) for f in (trickle, idle, stalled_body)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


if __name__ == "__main__":
    mode, raw_args = sys.argv[1], json.loads(sys.argv[2])
    result = {"probe": probe, "flood": flood, "slow": slow}[mode](raw_args)
    print(json.dumps(result))
