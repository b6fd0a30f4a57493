"""Preview URLs (host/server/routes_ports.py, supervisor ops_ports.py): a live real
host in a subprocess (vm actor on Docker), HTTP and WebSocket servers started inside
the sandbox, requests through ``/vms/{key}/ports/{port}/...`` with the token."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.server.live import LiveServer, agentvm, start_server
from tests.support.docker import remove_host

from .conftest import HOST_ID

pytestmark = pytest.mark.docker

TOKEN = "preview-test-token"
KEY = "pv"
# A tiny server inside the sandbox: echoes headers and bodies, redirects, sets a
# cookie, and speaks WebSocket (stdlib only: the image has python3, nothing else).
SERVER = r"""
import base64, hashlib, json, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/headers"):
            body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
            self.reply(200, body)
        elif self.path == "/redirect":
            self.reply(302, b"", extra=[("Location", "/target?x=1")])
        elif self.path == "/cookie":
            self.reply(200, b"ok", "text/plain", [("Set-Cookie", "s=1; Path=/; Domain=evil")])
        elif self.path == "/page":
            page = b"<script>fetch('/vms/pv/files/etc/passwd')</script>"
            self.reply(200, page, "text/html")
        elif self.path == "/clear":
            extra = [("Clear-Site-Data", '"storage"'), ("Service-Worker-Allowed", "/")]
            self.reply(200, b"ok", "text/plain", extra)
        elif self.path.startswith("/ws"):
            self.websocket()
        else:
            self.reply(404, b"no")

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(200, data, "application/octet-stream")

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        if "echo" in self.headers.get("Sec-WebSocket-Protocol", ""):
            self.send_header("Sec-WebSocket-Protocol", "echo")
        self.end_headers()
        self.wfile.flush()
        rf, wf = self.rfile, self.wfile
        if self.path == "/ws-protocols":  # first message: the subprotocols we were offered
            seen = self.headers.get("Sec-WebSocket-Protocol", "").encode()
            wf.write(bytes([0x81, len(seen)]) + seen)
            wf.flush()
        while True:
            head = rf.read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 15, head[1] & 127
            if n == 126:
                n = struct.unpack(">H", rf.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", rf.read(8))[0]
            mask = rf.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(rf.read(n)))
            if opcode == 8:
                wf.write(b"\x88\x02" + data[:2])
                wf.flush()
                return
            if data.startswith(b"wait:"):  # answer only after a quiet spell
                time.sleep(float(data[5:]))
                data = b"detiaw"
            reply = data[::-1] if opcode == 1 else data
            size = len(reply)
            if size < 126:
                hdr = bytes([0x80 | opcode, size])
            elif size < 65536:
                hdr = bytes([0x80 | opcode, 126]) + struct.pack(">H", size)
            else:
                hdr = bytes([0x80 | opcode, 127]) + struct.pack(">Q", size)
            wf.write(hdr + reply)
            wf.flush()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

# A hostile server inside the sandbox: endless response headers, or silence.
HOSTILE = r"""
import socket, sys, threading, time

def serve(conn):
    request = conn.recv(65536)
    if b"/flood" in request:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        try:
            while True:
                conn.sendall(b"X-Flood: " + b"a" * 8000 + b"\r\n")
        except OSError:
            return
    time.sleep(3600)  # accept, read, never answer

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def live_host(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real host with a token, one for the module; its containers removed after."""
    host_id = f"{HOST_ID}-pv"
    env = {
        "AGENTVM_HOST_ID": host_id,
        "AGENTVM_WARM_POOL": "0",
        # A sandbox port that never answers is given up after this (a 504).
        "AGENTVM_PREVIEW_IDLE_TIMEOUT_S": "3",
        "AGENTVM_PREVIEW_MAX_CONNECTIONS": "4",
    }
    db = tmp_path_factory.mktemp("ports") / "host.db"
    server = start_server(db, token=TOKEN, env=env, registry=None, deadline_s=120)
    yield server
    server.stop()
    client = docker.from_env()
    remove_host(client, host_id)
    client.close()


@pytest.fixture
def live(live_host: LiveServer) -> Iterator[LiveServer]:
    """The module's host; the test's vm is destroyed after it, so the next test starts
    on a fresh vm whose ports are free."""
    yield live_host
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{live_host.url}/actors/vm/{KEY}/actions/destroy"
    resp = httpx.post(url, json={"args": []}, headers=auth, timeout=120)
    assert resp.status_code in (200, 404), resp.text


def _act(http: httpx.Client, action: str, *args: Any) -> Any:
    res = http.post(f"/actors/vm/{KEY}/actions/{action}", json={"args": list(args)})
    assert res.status_code == 200, res.text
    return res.json()["output"]


def _wait_ports(http: httpx.Client, wanted: set[int]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        listed: list[dict[str, Any]] = _act(http, "list_ports")
        if wanted <= {p["port"] for p in listed}:
            return listed
        assert time.monotonic() < deadline, f"ports {wanted} never listened: {listed}"
        time.sleep(0.1)


def test_preview_proxy(live: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=120) as http:
        _act(http, "write_files", {"site/hello.txt": "hi", "srv.py": SERVER})
        _act(http, "spawn", "python3 -m http.server 8000", {"cwd": "/home/user/site"})
        _act(http, "spawn", ["python3", "/home/user/srv.py", "8001"])
        listed = _wait_ports(http, {8000, 8001})
        entry = next(p for p in listed if p["port"] == 8000)
        assert entry["address"] == "0.0.0.0" and entry["process"] == "python3", entry
        assert isinstance(entry["pid"], int)
        # The supervisor's own loopback forwarder (the LLM gateway) is not listed.
        assert 4141 not in {p["port"] for p in listed}
        routed = http.get(f"/vms/{KEY}/ports").json()
        link = next(p for p in routed["ports"] if p["port"] == 8000)["preview"]
        assert re.fullmatch(rf"/vms/{KEY}/ports/8000\.[A-Za-z0-9_-]{{24}}/", link), link
        assert routed["preview_template"].replace("{port}", "8000") == link

        # The directory listing of python's http.server, through the proxy.
        page = http.get(f"/vms/{KEY}/ports/8000/")
        assert page.status_code == 200, page.text
        assert "hello.txt" in page.text
        csp = page.headers["content-security-policy"]
        assert csp.startswith("sandbox ") and "allow-same-origin" not in csp
        assert http.get(f"/vms/{KEY}/ports/8000/hello.txt").text == "hi"
        root = http.get(f"/vms/{KEY}/ports/8000", follow_redirects=False)
        assert root.status_code == 308 and root.headers["location"] == f"/vms/{KEY}/ports/8000/"

        # What the sandbox's server sees: never the agentvm token; forwarded headers.
        seen = http.get(f"/vms/{KEY}/ports/8001/headers?a=%2F1", headers={"X-Mine": "1"}).json()
        names = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"] == "/headers?a=%2F1"
        assert "authorization" not in names and names["x-mine"] == "1"
        assert names["host"] == "localhost:8001"
        assert names["x-forwarded-prefix"] == f"/vms/{KEY}/ports/8001"
        assert names["x-forwarded-host"] == live.url.split("://")[1]
        # Bytes beyond ASCII in the path, query and a header value go through intact.
        odd = http.get(
            f"/vms/{KEY}/ports/8001/headers/%C3%A9?q=caf%C3%A9&r=%00",
            headers={"X-Latin": "caf\xe9".encode("latin-1")},
        )
        assert odd.status_code == 200, odd.text
        assert odd.json()["path"] == "/headers/%C3%A9?q=caf%C3%A9&r=%00"
        assert odd.json()["headers"]["x-latin"] == "caf\xe9"

        # Request bodies stream in and answers stream out (past the 4 MiB window).
        body = os.urandom(6 * 1024 * 1024)
        echoed = http.post(f"/vms/{KEY}/ports/8001/echo", content=body)
        assert echoed.status_code == 200 and echoed.content == body

        def chunks() -> Iterator[bytes]:
            yield b"part one, "
            yield b"part two"

        streamed = http.post(f"/vms/{KEY}/ports/8001/echo", content=chunks())
        assert streamed.content == b"part one, part two"

        # Redirects and cookies stay under the preview prefix.
        moved = http.get(f"/vms/{KEY}/ports/8001/redirect", follow_redirects=False)
        assert moved.headers["location"] == f"/vms/{KEY}/ports/8001/target?x=1"
        cookie = http.get(f"/vms/{KEY}/ports/8001/cookie").headers["set-cookie"]
        assert cookie == f"s=1; Path=/vms/{KEY}/ports/8001/"

        # A preview link opens in a browser without the token (it carries a
        # capability for this vm's previews), also for the page's own sub-requests.
        browser = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}
        opened = httpx.get(live.url + link, headers=browser)
        assert opened.status_code == 200 and "hello.txt" in opened.text
        assert opened.headers["referrer-policy"] == "no-referrer"
        assert opened.headers["content-security-policy"] == csp
        sub = httpx.get(live.url + link + "hello.txt", headers={"Sec-Fetch-Site": "cross-site"})
        assert sub.status_code == 200 and sub.text == "hi"
        cap = link.split(".")[1].rstrip("/")
        forged = link.replace(cap, cap[::-1])
        assert httpx.get(live.url + forged).status_code == 401
        assert http.get(forged).json()["error"]["code"] == "invalid_preview_link"
        # The capability opens previews only, never the API or another vm's previews.
        assert httpx.get(f"{live.url}/vms/{KEY}/files/etc/passwd?{cap}").status_code == 401
        other = link.replace(f"/vms/{KEY}/", "/vms/other/")
        assert httpx.get(live.url + other).status_code == 401

        # Nothing listens: a clear 502 JSON error; a bad port: 400 naming the field.
        closed = http.get(f"/vms/{KEY}/ports/8999/")
        assert closed.status_code == 502, closed.text
        assert closed.json()["error"]["code"] == "port_unavailable"
        assert closed.json()["error"]["metadata"]["port"] == 8999
        bad = http.get(f"/vms/{KEY}/ports/http/")
        assert bad.status_code == 400 and bad.json()["error"]["metadata"]["field"] == "path.port"
        unknown = httpx.get(f"{live.url}/vms/nope/ports/8000/", headers=auth)
        assert unknown.status_code == 404, unknown.text

        # WebSocket through the proxy: subprotocol, text and binary, a big message.
        url = live.url.replace("http://", "ws://") + f"/vms/{KEY}/ports/8001/ws"
        with ws_connect(url, additional_headers=auth, subprotocols=["echo"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "echo"
            ws.send("hello")
            assert ws.recv(timeout=30) == "olleh"
            blob = os.urandom(300_000)
            ws.send(blob)
            assert ws.recv(timeout=30) == blob
        # The same through a preview link, without the token.
        url = (
            live.url.replace("http://", "ws://")
            + link.replace("/ports/8000.", "/ports/8001.")
            + "ws"
        )
        with ws_connect(url) as ws:
            ws.send("link")
            assert ws.recv(timeout=30) == "knil"
            # Quiet for longer than the idle deadline (3 s here): a WebSocket stays.
            ws.send("wait:4")
            assert ws.recv(timeout=60) == "waited"


def test_a_preview_cannot_use_the_api(live: LiveServer) -> None:
    """The attacker's page inside the sandbox, rendered by the user's browser."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=120) as http:
        _act(http, "write_file", "srv.py", SERVER)
        _act(http, "spawn", ["python3", "/home/user/srv.py", "8001"])
        _wait_ports(http, {8001})
        page = http.get(f"/vms/{KEY}/ports/8001/page")
        assert page.status_code == 200
        # The browser runs it in an opaque origin: no access to the console's
        # storage (the token), and its requests say "null" / cross-site.
        csp = page.headers["content-security-policy"]
        assert "sandbox" in csp and "allow-same-origin" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"

        own = live.url + "/"
        from_preview = {"Origin": "null", "Sec-Fetch-Site": "cross-site", "Referer": own}
        # Its fetch of the API (it cannot know the token; even with it: refused).
        no_token = httpx.get(f"{live.url}/vms/{KEY}/files/etc/passwd", headers=from_preview)
        assert no_token.status_code in (401, 403)
        with_token = http.get(f"/vms/{KEY}/files/etc/passwd", headers=from_preview)
        assert with_token.status_code == 403, with_token.text
        assert with_token.json()["error"]["code"] == "cross_origin"
        action = http.post(
            f"/actors/vm/{KEY}/actions/exec",
            json={"args": ["id"]},
            headers={"Sec-Fetch-Site": "cross-site", "Referer": own},
        )
        assert action.status_code == 403
        # The API never takes a cookie instead of the bearer token.
        cookie = httpx.get(
            f"{live.url}/actors/vm/{KEY}/state", headers={"Cookie": f"token={TOKEN}"}
        )
        assert cookie.status_code == 401
        # Cross-site requests to a preview (the page's own, from its opaque origin) are
        # served only through a link: a page of another vm or site cannot make one up.
        link = http.get(f"/vms/{KEY}/ports").json()["preview_template"].format(port=8001)
        sub = {"Sec-Fetch-Site": "cross-site", "Referer": own}
        assert httpx.get(live.url + link + "headers", headers=sub).status_code == 200
        assert http.get(f"/vms/{KEY}/ports/8001/headers", headers=sub).status_code == 403
        evil = {"Origin": "http://evil.example", "Referer": "http://evil.example/"}
        assert http.post(f"/vms/{KEY}/ports/8001/echo", headers=evil).status_code == 403
        # Headers that would act on the whole origin (the console's storage, service
        # workers) never leave the proxy.
        cleared = http.get(f"/vms/{KEY}/ports/8001/clear")
        assert cleared.status_code == 200
        assert "clear-site-data" not in cleared.headers
        assert "service-worker-allowed" not in cleared.headers
        # The console's token subprotocol never reaches the sandbox.
        ws_url = live.url.replace("http://", "ws://") + f"/vms/{KEY}/ports/8001/ws-protocols"
        offered = ["echo", "agentvm", "agentvm.bearer.c2VjcmV0"]
        with ws_connect(ws_url, additional_headers=auth, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.recv(timeout=30) == "echo"


def test_cli_ports_and_open(live: LiveServer) -> None:
    env = {"AGENTVM_URL": live.url, "AGENTVM_TOKEN": TOKEN}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=120) as http:
        _act(http, "spawn", "python3 -m http.server 8000", {"cwd": "/tmp"})
        _wait_ports(http, {8000})
    listed = agentvm("vm", "ports", KEY, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    ports = json.loads(listed.stdout)
    [url] = [p["url"] for p in ports if p["port"] == 8000]
    assert re.fullmatch(rf"{live.url}/vms/{KEY}/ports/8000\.[A-Za-z0-9_-]+/", url), url
    opened = agentvm("vm", "open", KEY, "8000", env=env)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.decode().strip() == url
    # The printed URL is what a browser opens: no token needed.
    assert httpx.get(url).status_code == 200
    warned = agentvm("vm", "open", KEY, "9000", env=env)
    assert warned.returncode == 0 and b"nothing listens on port 9000" in warned.stderr
    assert warned.stdout.decode().strip() == url.replace("/8000.", "/9000.")


def test_a_hostile_sandbox_server_is_bounded(live: LiveServer) -> None:
    """The attacker's server inside the sandbox: endless headers, then silence."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=120) as http:
        _act(http, "write_file", "hostile.py", HOSTILE)
        _act(http, "spawn", ["python3", "/home/user/hostile.py", "8002"])
        _wait_ports(http, {8002})
        flood = http.get(f"/vms/{KEY}/ports/8002/flood")
        assert flood.status_code == 502, flood.text
        assert flood.json()["error"]["code"] == "port_unavailable"
        assert "valid HTTP" in flood.json()["error"]["message"]
        silent = http.get(f"/vms/{KEY}/ports/8002/silent")
        assert silent.status_code == 504, silent.text
        assert silent.json()["error"]["code"] == "port_timeout"
        # The server is still fine for everything else.
        assert http.get(f"/vms/{KEY}/ports").status_code == 200
        # A page opening connection after connection gets a 429 past the limit (4).
        url = live.url.replace("http://", "ws://") + f"/vms/{KEY}/ports/8001/ws"
        _act(http, "write_file", "srv.py", SERVER)
        _act(http, "spawn", ["python3", "/home/user/srv.py", "8001"])
        _wait_ports(http, {8001})
        with contextlib.ExitStack() as held:
            for _ in range(4):
                held.enter_context(ws_connect(url, additional_headers=auth))
            busy = http.get(f"/vms/{KEY}/ports/8001/headers")
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"]["code"] == "too_many_previews"
        deadline = time.monotonic() + 30
        while http.get(f"/vms/{KEY}/ports/8001/headers").status_code != 200:
            assert time.monotonic() < deadline, "connections were not given back"
            time.sleep(0.05)
