"""Egress of allowlist vms (docs/egress.md), played from inside real sandboxes.

The vm has no network interface; its HTTP(S) goes through the host's proxy over
the supervisor link. Local servers on loopback stand in for the internet, named
by the proxy's resolver overrides: ``allowed.test`` (an HTTP server), ``denied.test``
and a victim server standing in for anything on the host (e.g. the agentvm API)
that must never see a byte, and ``git.test`` (git smart HTTP behind basic auth,
whose token only the host knows).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from host.app import HostSettings, egress_proxy
from host.egress import (
    Allowlist,
    Denied,
    EgressConfigError,
    EgressLimits,
    EgressProxy,
    load_credentials,
    normalise_host,
    parse_resolve,
)
from host.egress.policy import is_public
from host.egress.proxy import CONNECTIONS, CREDENTIALS
from host.sandbox import SandboxLimits
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.options import parse_options
from orchestrator import Engine, setup
from orchestrator.builtin import vm_input_for
from orchestrator.errors import InvalidRequest
from orchestrator.metrics import REGISTRY
from tests.support import eventually
from tests.support.docker import docker_client, remove_host
from vm_images.builder import ensure_image
from vm_images.supervisor.egress import EGRESS_SOCKET_NAME

HOST_ID = f"e{os.getpid()}-{uuid.uuid4().hex[:6]}"
LIMITS = SandboxLimits(memory_mb=256, cpus=1.0, pids=128, tmp_mb=64)
TOKEN = "s3cr3t-" + uuid.uuid4().hex
CRED_ASK = "protocol=https\nhost=denied.test\n"


# -- policy (no Docker) ---------------------------------------------------------------


def test_names_are_normalised_and_ip_literals_refused() -> None:
    assert normalise_host("GitHub.COM.") == "github.com"
    for literal in ("127.0.0.1", "[::1]", "::1", "2130706433", "0x7f.1", "127.1", "10.0.0.1."):
        with pytest.raises(Denied, match="IP addresses"):
            normalise_host(literal)
    for bad in ("", "a b", "-x.com", "x_y.com", "a@b.com", "é.com", "a" * 64 + ".com"):
        with pytest.raises(Denied):
            normalise_host(bad)


def test_allowlist_exact_and_wildcard() -> None:
    allow = Allowlist.of(["GitHub.com", "*.PyPI.org."])
    assert allow.allows("github.com")
    assert not allow.allows("api.github.com")
    assert allow.allows("files.pypi.org") and allow.allows("a.b.pypi.org")
    assert not allow.allows("pypi.org")  # a wildcard is subdomains only
    assert not allow.allows("evilpypi.org")


def test_only_public_addresses_are_public() -> None:
    for private in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1",
                    "fe80::1", "fc00::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"):  # fmt: skip
        assert not is_public(private), private
    assert is_public("140.82.112.3") and is_public("2606:4700::1111")


async def test_a_name_resolving_to_the_hosts_loopback_is_refused() -> None:
    """DNS rebinding: an allowed name whose DNS answer is loopback/private is refused
    (this machine's own host name resolves to a loopback address)."""
    proxy = EgressProxy()
    name = socket.gethostname().lower()
    with pytest.raises(Denied, match="no public address"):
        await proxy.resolve(name, 443)
    with pytest.raises(Denied, match="loopback"):
        await proxy.resolve("localhost", 443)
    # Only an operator's override may lead to a private address.
    mapped = EgressProxy(resolve=parse_resolve(f"{name}=127.0.0.1:8080"))
    assert await mapped.resolve(name, 443) == [("127.0.0.1", 8080)]


def test_settings_are_validated(tmp_path: Path) -> None:
    assert parse_resolve("a.test=127.0.0.1:81, b.test=[::1]")["b.test"].address == "::1"
    for bad in ("a.test", "a.test=nowhere", "127.0.0.1=127.0.0.1", "a.test=1.2.3.4:0"):
        with pytest.raises(EgressConfigError):
            parse_resolve(bad)
    creds = load_credentials('{"Git.Test": {"username": "u", "password": "p"}}')
    assert creds["git.test"].password == "p"
    file = tmp_path / "git-credentials"
    file.write_text("https://x-access-token:t%40k@github.com\n")
    assert load_credentials(str(file))["github.com"].password == "t@k"
    with pytest.raises(EgressConfigError):
        load_credentials('{"git.test": "token"}')
    with pytest.raises(EgressConfigError, match="PORTS"):
        egress_proxy(HostSettings(egress_ports="80,http"))


def test_vm_network_option() -> None:
    opts = parse_options({"network": {"allow": ["GitHub.com"]}}, VmOptions())
    assert opts.egress_allow() == ["github.com"] and opts.docker_network() == "none"
    for bad in ({"allow": ["127.0.0.1"]}, {"allow": []}, "internet", {"allow": ["x"], "y": 1}):
        with pytest.raises(InvalidRequest) as info:
            parse_options({"network": bad}, VmOptions())
        assert info.value.metadata["field"] == "network"
    # Cloning a URL allows the repo's host only; no bridge.
    assert vm_input_for("https://github.com/o/r.git") == {"network": {"allow": ["github.com"]}}
    assert vm_input_for("/srv/repo") is None
    with pytest.raises(InvalidRequest):
        vm_input_for("git@github.com:o/r.git")


# -- the proxy's own bounds (no Docker: a client on its unix socket) -------------------------


def async_value(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def probe() -> Any:
        return fn()

    return probe


async def _raw(path: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    out = await reader.read()
    writer.close()
    return out


async def test_proxy_bounds_heads_and_connections(tmp_path: Path) -> None:
    proxy = EgressProxy(limits=EgressLimits(max_connections=2, header_timeout=0.5))
    await proxy.serve("sb", tmp_path, ["allowed.test"], container=None)
    sock = tmp_path / EGRESS_SOCKET_NAME
    try:
        huge = b"GET http://allowed.test/ HTTP/1.1\r\nx: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await _raw(sock, huge)).startswith(b"HTTP/1.1 431")
        assert (await _raw(sock, b"GET http://allowed.test/")).startswith(b"HTTP/1.1 408")
        assert (await _raw(sock, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400")
        # Two silent connections hold the cap; a third is turned away at once.
        held = [await asyncio.open_unix_connection(str(sock)) for _ in range(2)]
        listener = proxy._served["sb"]
        await eventually(async_value(lambda: len(listener._conns)), lambda n: n == 2)
        # (Sending nothing: a request left unread would turn the reply into a reset.)
        third = await _raw(sock, b"")
        assert third.startswith(b"HTTP/1.1 503"), third
        for _, w in held:
            w.close()
    finally:
        await proxy.close()
    assert not sock.exists()


# -- local servers -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.headers.get('host')}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _GitBackend(BaseHTTPRequestHandler):
    """git smart HTTP (``git http-backend`` as CGI) behind basic auth."""

    root = ""
    expected = "Basic " + base64.b64encode(f"agent:{TOKEN}".encode()).decode()

    def _handle(self) -> None:
        if self.headers.get("authorization") != self.expected:
            self.send_response(401)
            self.send_header("www-authenticate", 'Basic realm="git"')
            self.send_header("content-length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        env = {
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("content-encoding", ""),
            "REMOTE_USER": "agent",
            "PATH": os.environ["PATH"],
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, _Server]]:
    repo = tmp_path / "git" / "repo.git"
    work = tmp_path / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README").write_text("private repository\n")
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "first"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True)
    _GitBackend.root = str(tmp_path / "git")
    made = {
        "allowed": _Server(("127.0.0.1", 0), _Hello),
        "victim": _Server(("127.0.0.1", 0), _Hello),
        "git": _Server(("127.0.0.1", 0), _GitBackend),
    }
    for server in made.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield made
    for server in made.values():
        server.shutdown()
        server.server_close()


# -- sandboxes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    client = docker_client()
    yield ensure_image(["common"], client=client)
    remove_host(client, HOST_ID)
    client.close()


@pytest.fixture
def egress_host(
    make_engine: Callable[..., Any], image: str, servers: dict[str, _Server]
) -> Callable[..., Any]:
    """``async with egress_host() as (engine, proxy):`` a vm host whose egress proxy maps
    the test names onto the local servers and holds the git token."""

    def port(name: str) -> int:
        return servers[name].server_address[1]

    @asynccontextmanager
    async def factory() -> AsyncIterator[tuple[Engine, EgressProxy]]:
        settings = HostSettings(
            egress_resolve=f"allowed.test=127.0.0.1:{port('allowed')},"
            f"denied.test=127.0.0.1:{port('victim')},git.test=127.0.0.1:{port('git')}",
            git_credentials=json.dumps({"git.test": {"username": "agent", "password": TOKEN}}),
        )
        proxy = egress_proxy(settings)
        manager = await SandboxManager.open(
            host_id=HOST_ID,
            pool_size=0,
            defaults=VmOptions(limits=LIMITS),
            reap_interval=None,
            egress=proxy,
        )
        try:
            async with make_engine(setup(use={"vm": vm_actor(manager)})) as engine:
                manager.attach(engine)
                yield engine, proxy
        finally:
            await manager.close()
            await proxy.close()
            await asyncio.to_thread(remove_host, docker.from_env(), HOST_ID)

    return factory


# Raw proxy requests from inside the sandbox: each prints the proxy's status line, and
# what a tunnel carried back when the CONNECT was accepted.
ATTACK = r"""
import json, socket, sys
out = {}
for name, req in json.load(sys.stdin).items():
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(req.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = data.split(b"\r\n", 1)[0].decode()
    if status.startswith("HTTP/1.1 200 Connection established"):
        s.sendall(b"GET /tunnel HTTP/1.0\r\nHost: allowed.test\r\n\r\n")
        while chunk := s.recv(65536):
            data += chunk
    out[name] = [status, data.decode(errors="replace")]
    s.close()
print(json.dumps(out))
"""

DIRECT = r"""
import json, socket
out = {}
for host, port in [("172.17.0.1", %d), ("1.1.1.1", 443), ("8.8.8.8", 53)]:
    try:
        socket.create_connection((host, port), timeout=5).close()
        out[host] = "connected"
    except OSError as exc:
        out[host] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


async def test_allowlist_vm_reaches_allowed_names_only(
    egress_host: Callable[..., Any], servers: dict[str, _Server]
) -> None:
    victim = servers["victim"].server_address[1]
    allowed_before = CONNECTIONS.value(result="allowed")
    denied_before = CONNECTIONS.value(result="denied")
    async with egress_host() as (engine, _):
        vm = engine.client().vm.get_or_create(
            ["egress"], input={"network": {"allow": ["allowed.test"]}}
        )
        # Plain HTTP through the proxy, with the proxy env the supervisor sets.
        res = await vm.exec("env | grep -i _proxy | sort; curl -sS http://allowed.test/x")
        assert res["exit_code"] == 0, res
        assert "HTTP_PROXY=http://127.0.0.1:3128" in res["stdout"]
        assert "hello from allowed.test" in res["stdout"]
        # The container has loopback only: nothing else can be dialled directly.
        res = await vm.exec("ls /sys/class/net")
        assert res["stdout"].split() == ["lo"]
        res = await vm.exec(["python3", "-"], {"stdin": DIRECT % victim})
        direct = json.loads(res["stdout"])
        assert all("unreachable" in v.lower() for v in direct.values()), direct

        attacks = {
            "tunnel": "CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n",
            "denied name": "CONNECT denied.test:443 HTTP/1.1\r\n\r\n",
            "denied url": "GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n",
            "ipv4": f"CONNECT 127.0.0.1:{victim} HTTP/1.1\r\n\r\n",
            "ipv6": f"CONNECT [::1]:{victim} HTTP/1.1\r\n\r\n",
            "decimal ip": "CONNECT 2130706433:443 HTTP/1.1\r\n\r\n",
            "ip url": f"GET http://127.0.0.1:{victim}/ HTTP/1.1\r\n\r\n",
            "localhost": f"CONNECT localhost:{victim} HTTP/1.1\r\n\r\n",
            "server port": f"CONNECT allowed.test:{victim} HTTP/1.1\r\n\r\n",
            "userinfo": "GET http://allowed.test@denied.test/ HTTP/1.1\r\n\r\n",
            "smuggled host": "GET http://denied.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            "credential": "POST /_agentvm/git-credential HTTP/1.1\r\n"
            f"content-length: {len(CRED_ASK)}\r\n\r\n{CRED_ASK}",
        }
        res = await vm.exec(["python3", "-c", ATTACK], {"stdin": json.dumps(attacks)})
        assert res["exit_code"] == 0, res
        got = json.loads(res["stdout"])
    status = {name: value[0] for name, value in got.items()}
    assert status.pop("tunnel") == "HTTP/1.1 200 Connection established"
    assert "hello from allowed.test" in got["tunnel"][1]
    bad_request = {"userinfo"}
    for name, line in status.items():
        want = "HTTP/1.1 400" if name in bad_request else "HTTP/1.1 403"
        assert line.startswith(want), (name, got[name])
    assert "not in this vm's network allowlist" in got["denied name"][1]
    assert "IP addresses are not allowed" in got["ipv6"][1]
    assert "port" in got["server port"][1]
    # Not one connection reached the server the attacks aimed at.
    assert servers["victim"].connections == 0
    assert CONNECTIONS.value(result="allowed") >= allowed_before + 2
    assert CONNECTIONS.value(result="denied") >= denied_before + len(status) - 1
    metrics = REGISTRY.render()
    assert 'agentvm_egress_connections_total{result="denied"}' in metrics
    assert 'agentvm_egress_bytes_total{direction="received"}' in metrics


async def test_git_clone_with_credentials_answered_by_the_host(
    egress_host: Callable[..., Any], servers: dict[str, _Server]
) -> None:
    answered = CREDENTIALS.value(result="answered")
    async with egress_host() as (engine, _):
        vm = engine.client().vm.get_or_create(["git"], input={"network": {"allow": ["git.test"]}})
        res = await vm.exec("git clone -q http://git.test/repo.git clone && cat clone/README")
        assert res["exit_code"] == 0, res
        assert res["stdout"] == "private repository\n"
        # The token was used but is nowhere in the sandbox: not on disk, not in any
        # process's environment, not in git's config.
        res = await vm.exec(
            f"grep -rsl {TOKEN} /home/user /tmp /proc/[0-9]*/environ; "
            "git -C clone config --list --show-origin | grep -i -e cred -e token -e password; "
            "ls -a /home/user"
        )
        assert TOKEN not in res["stdout"], res
        assert ".git-credentials" not in res["stdout"]
        # A vm that does not list git.test gets no credential for it.
        other = engine.client().vm.get_or_create(
            ["nocred"], input={"network": {"allow": ["allowed.test"]}}
        )
        res = await other.exec(
            "printf 'protocol=http\\nhost=git.test\\n' | git credential fill; "
            "git clone -q http://git.test/repo.git clone"
        )
        assert res["exit_code"] != 0 and TOKEN not in res["stdout"], res
    assert CREDENTIALS.value(result="answered") == answered + 1
    assert CREDENTIALS.value(result="denied") >= 1


async def test_default_vm_has_no_proxy(egress_host: Callable[..., Any]) -> None:
    async with egress_host() as (engine, proxy):
        vm = engine.client().vm.get_or_create(["plain"])
        res = await vm.exec("env | grep -ci proxy; curl -sS -m 5 http://127.0.0.1:3128/")
        assert res["stdout"].startswith("0"), res
        assert res["exit_code"] != 0  # nothing listens: there is no proxy
        assert not proxy._served


async def test_a_process_outside_the_container_is_refused(tmp_path: Path) -> None:
    """The socket's mode lets any local uid connect: the peer check decides. The test
    process is no process of that container, so it gets a 403 and nothing is proxied."""
    proxy = EgressProxy()
    await proxy.serve("sb", tmp_path, ["allowed.test"], container="0" * 64)
    try:
        reply = await _raw(
            tmp_path / EGRESS_SOCKET_NAME, b"CONNECT allowed.test:443 HTTP/1.1\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 403")
    finally:
        await proxy.close()
