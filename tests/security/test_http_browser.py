"""Attacks on the local HTTP API from a web page in the user's browser.

Each test sends what a browser sends for the attack (DNS rebinding's foreign
``Host``, a cross-site "simple" ``text/plain`` POST, a cross-site GET that
subscribes, a WebSocket from another origin) to a real ``agentvm serve`` in a
subprocess, and checks the refusal *and* that nothing happened (no actor created).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.server.live import LiveServer, start_server

CONSOLE = "https://console.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("browser") / "agentvm.db")
    yield live
    assert live.stop() == 0


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with a configured extra host name and an allowed web origin."""
    env = {"AGENTVM_ALLOWED_HOSTS": "agentvm.test", "AGENTVM_ALLOWED_ORIGINS": CONSOLE}
    live = start_server(tmp_path_factory.mktemp("browser2") / "agentvm.db", env=env)
    yield live
    assert live.stop() == 0


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _keys(http: httpx.Client, name: str) -> list[list[str]]:
    resp = http.get("/actors", params={"name": name})
    assert resp.status_code == 200, resp.text
    return [a["key"] for a in resp.json()["actors"]]


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert (error["group"], error["code"]) == ("request", code), error
    metadata: dict[str, object] = error["metadata"]
    return metadata


def test_dns_rebinding_host_is_refused(server: LiveServer, http: httpx.Client) -> None:
    """The page's own name re-pointed at 127.0.0.1: the browser calls it same-origin,
    but the request says ``Host: evil.example:<port>``."""
    port = _port(server.url)
    evil = f"http://evil.example:{port}"
    for method, path, kwargs in [
        ("POST", "/actors/counter/rebind/actions/increment", {"json": {"args": [1]}}),
        ("GET", "/actors", {}),
        ("GET", "/actors/counter/rebind/events", {}),
        ("DELETE", "/actors/counter/rebind", {}),
        ("PUT", "/vms/rebind/files/tmp/x", {"content": b"x"}),
    ]:
        headers = {"Host": f"evil.example:{port}", "Origin": evil, "Sec-Fetch-Site": "same-origin"}
        resp = http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        metadata = _error(resp, 403, "host_not_allowed")
        assert metadata["header"] == "host" and metadata["host"] == "evil.example"
        assert "AGENTVM_ALLOWED_HOSTS" in resp.json()["error"]["message"]
    assert ["rebind"] not in _keys(http, "counter")
    assert ["rebind"] not in _keys(http, "vm")

    # Loopback names and addresses are ours, with or without the port.
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", "app.localhost"):
        assert http.get("/healthz", headers={"Host": host}).status_code == 200, host


def test_cross_site_text_plain_post_is_refused(server: LiveServer, http: httpx.Client) -> None:
    """``fetch(url, {method: "POST", mode: "no-cors", body})`` from another site: a
    "simple" request that needs no CORS preflight (it would start a vm)."""
    body = b'{"args": [5]}'
    for headers in (
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},  # a sandboxed iframe or a file:// page
        {"Origin": f"http://localhost:{_port(server.url) + 1}", "Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},  # no Origin: still a browser saying cross-site
    ):
        resp = http.post(
            "/actors/counter/csrf/actions/increment",
            content=body,
            headers={"Content-Type": "text/plain;charset=UTF-8", **headers},
        )
        metadata = _error(resp, 403, "cross_origin")
        assert metadata["header"] in ("origin", "sec-fetch-site")
        # Get-or-create of a vm (it would start a container) and uploads likewise.
        assert http.post("/actors/vm/csrf", headers=headers).status_code == 403
        assert http.put("/vms/csrf/files/tmp/x", content=b"x", headers=headers).status_code == 403
    assert ["csrf"] not in _keys(http, "counter")
    assert ["csrf"] not in _keys(http, "vm")


def test_non_json_bodies_are_refused(http: httpx.Client) -> None:
    """Without Origin headers (an old browser, a form), a body that is not declared
    JSON is refused before anything runs: 415 naming the header."""
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
        resp = http.post(
            "/actors/counter/form/actions/increment",
            content=b'{"args": [2]}',
            headers={"Content-Type": ctype},
        )
        metadata = _error(resp, 415, "unsupported_media_type")
        assert metadata["header"] == "content-type"
    resp = http.post("/actors/vm/form", content=b'{"input": null}')  # no Content-Type
    assert _error(resp, 415, "unsupported_media_type")["content_type"] is None
    assert ["form"] not in _keys(http, "counter")
    assert ["form"] not in _keys(http, "vm")
    # JSON (also with a charset or a +json type) and bodiless requests are fine.
    resp = http.post(
        "/actors/counter/form/actions/increment",
        content=b'{"args": [2]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status_code == 200 and resp.json()["output"] == 2
    vnd = {"Content-Type": "application/vnd.agentvm+json"}
    resp = http.post("/actors/counter/form/actions/increment", content=b"{}", headers=vnd)
    assert resp.status_code == 200 and resp.json()["output"] == 3
    assert http.post("/actors/counter/form/actions/get_count").json()["output"] == 3
    # Uploads are raw bytes, whatever their type.
    resp = http.put("/vms/form/files/tmp/a.txt", content=b"hello", headers={"Content-Type": "x/y"})
    assert resp.status_code == 200, resp.text


def test_cross_site_subscription_is_refused(server: LiveServer, http: httpx.Client) -> None:
    """A GET with side effects: ``new EventSource(url)`` / ``<img src>`` from another
    site would create the actor (``?create=true``) and keep it awake."""
    resp = http.get(
        "/actors/counter/sse-csrf/events",
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    )
    assert _error(resp, 403, "cross_origin")["header"] == "sec-fetch-site"
    resp = http.get("/actors/counter/sse-csrf/events", headers={"Origin": "https://evil.example"})
    assert _error(resp, 403, "cross_origin")["header"] == "origin"
    assert ["sse-csrf"] not in _keys(http, "counter")


def test_cross_origin_websocket_is_refused(server: LiveServer, http: httpx.Client) -> None:
    ws = server.url.replace("http://", "ws://") + "/actors/counter/ws-csrf/connect"
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(ws, origin="https://evil.example").__enter__()  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert b"cross_origin" in refused.value.response.body
    assert ["ws-csrf"] not in _keys(http, "counter")
    # The server's own origin (a page it serves) connects.
    with ws_connect(ws, origin=server.url) as conn:  # type: ignore[arg-type]
        assert '"connected"' in str(conn.recv(timeout=10))


def test_same_origin_and_non_browser_requests_pass(server: LiveServer, http: httpx.Client) -> None:
    url = "/actors/counter/same/actions/increment"
    for headers in (
        {},  # the Python client, curl, the CLI
        {"Origin": server.url, "Sec-Fetch-Site": "same-origin"},  # a page the server serves
        {
            "Origin": server.url.replace("127.0.0.1", "localhost"),
            "Host": urlsplit(server.url.replace("127.0.0.1", "localhost")).netloc,
        },
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Sec-Fetch-Site": "same-origin"},
    ):
        resp = http.post(url, json={"args": [1]}, headers=headers)
        assert resp.status_code == 200, (headers, resp.text)
    assert http.get("/docs", headers={"Sec-Fetch-Site": "none"}).status_code == 200


def test_configured_hosts_and_origins(configured: LiveServer) -> None:
    port = _port(configured.url)
    with httpx.Client(base_url=configured.url, timeout=30) as http:
        host = {"Host": f"agentvm.test:{port}"}
        assert http.get("/actors", headers=host).status_code == 200
        assert http.get("/actors", headers={"Host": "other.test"}).status_code == 403
        console = {"Origin": CONSOLE, "Sec-Fetch-Site": "cross-site"}
        resp = http.post("/actors/counter/c/actions/increment", json={"args": [1]}, headers=console)
        assert resp.status_code == 200, resp.text
        evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
        resp = http.post("/actors/counter/c/actions/increment", json={"args": [1]}, headers=evil)
        assert resp.status_code == 403


def test_settings_take_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    from host.server.settings import ServerSettings

    monkeypatch.setenv("AGENTVM_ALLOWED_HOSTS", "a.test, b.test")
    monkeypatch.setenv("AGENTVM_ALLOWED_ORIGINS", "https://x.test")
    s = ServerSettings()
    assert s.allowed_hosts == ["a.test", "b.test"] and s.allowed_origins == ["https://x.test"]
