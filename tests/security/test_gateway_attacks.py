"""Attacks on the LLM gateway, played from inside a real sandbox (issue 8, part A).

The attacker (tests/security/gateway_attack.py) runs with python3 in the container
and talks HTTP to the gateway port (or straight to /run/agentvm/gateway.sock). The
host side is real: the gateway in this process, a fake Anthropic upstream, and a
"trap" listener on the host's loopback standing in for anything the attacker would
like the host to reach (another service, the agentvm API).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from host.gateway import GatewayLimits, LLMGateway
from host.sandbox import DockerBackend, ProcessOutput, Sandbox, SandboxLimits, SandboxSpec
from tests.support import eventually
from tests.support.docker import docker_client, remove_host, sandbox_backend
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.builder import ensure_image

pytestmark = pytest.mark.docker

HOST_ID = f"g{os.getpid()}-{uuid.uuid4().hex[:6]}"
LIMITS = SandboxLimits(memory_mb=512, cpus=1.0, pids=128, tmp_mb=64)
ATTACK = Path(__file__).with_name("gateway_attack.py")
ATTACK_PATH = "/tmp/gateway_attack.py"
HOST_KEY = "sk-ant-host-" + uuid.uuid4().hex
MIB = 1024 * 1024


@dataclass
class Trap:
    """A host-loopback listener: records every connection and byte it gets."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read(65536))
        writer.close()


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    yield client
    containers, volumes = remove_host(client, HOST_ID)
    client.close()
    assert not containers and not volumes, (containers, volumes)


@pytest.fixture(scope="module")
def image(docker_engine: docker.DockerClient) -> str:
    return ensure_image(["common"], client=docker_engine)


@pytest.fixture
async def sandbox(image: str, request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    async with sandbox_backend(HOST_ID) as backend:
        sb = await _create(backend, image, request.node.name)
        await sb.write_file(ATTACK_PATH, ATTACK.read_bytes())
        yield sb


async def _create(backend: DockerBackend, image: str, name: str) -> Sandbox:
    return await backend.create(SandboxSpec(image=image, key=["gw", name[:60]], limits=LIMITS))


@pytest.fixture
def upstream() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic().start()
    yield fake
    fake.close()


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    t = Trap()
    t.server = await asyncio.start_server(t._conn, "127.0.0.1", 0)
    t.port = t.server.sockets[0].getsockname()[1]
    yield t
    t.server.close()


async def _serve(sandbox: Sandbox, upstream: str, limits: GatewayLimits) -> LLMGateway:
    gw = LLMGateway(api_key=HOST_KEY, upstream=upstream, limits=limits)
    await gw.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    return gw


async def attack(sandbox: Sandbox, mode: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await sandbox.exec(["python3", ATTACK_PATH, mode, json.dumps(args)], timeout=120)
    assert res.exit_code == 0, res
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def rss() -> int:
    """This process's resident set (the gateway runs in it), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def post(target: str, *, method: str = "POST", host: str = "127.0.0.1") -> str:
    body = json.dumps({"model": "claude-x", "max_tokens": 5, "messages": []})
    return (
        f"{method} {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}"
    )


async def test_request_targets_cannot_move_the_request_or_the_key(
    sandbox: Sandbox, upstream: FakeAnthropic, trap: Trap
) -> None:
    """The sandbox picks the request target; only allowlisted origin-form paths are
    forwarded, always to the configured upstream. Everything else is a 4xx before
    any upstream connection, and the trap on the host's loopback hears nothing."""
    gw = await _serve(sandbox, upstream.url, GatewayLimits())
    upstream.script(Turn.text("ok"), Turn.text("ok"))
    p = trap.port
    hostile = {
        f"@127.0.0.1:{p}/v1/messages": 400,
        ".evil.example/v1/messages": 400,
        f"http://127.0.0.1:{p}/v1/messages": 400,
        f"//127.0.0.1:{p}/v1/messages": 400,
        f"/\\127.0.0.1:{p}/v1/messages": 404,
        "/v1/../admin": 404,
        "/v1/%2e%2e/actors": 404,
        "/v1/messages/%2e%2e/%2e%2e/actors": 404,
        "/v1/files": 404,
        "/actors": 404,
        "/v1/messages#@evil": 404,
        f"/v1/messages?x=@127.0.0.1:{p}": 400,
        "/v1/messages?x=%2F%2Fevil": 400,
    }
    requests = [{"raw": post(t)} for t in hostile]
    requests += [
        {"raw": post("/v1/messages", method="GET"), "want": 405},
        {"raw": f"CONNECT 127.0.0.1:{p} HTTP/1.1\r\nhost: 127.0.0.1:{p}\r\n\r\n", "want": 400},
        # The same, straight on the unix socket rather than through the loopback port.
        {"raw": post(f"@127.0.0.1:{p}/v1/messages"), "unix": True, "want": 400},
        # Allowed routes, once with a hostile Host header: both reach only the upstream.
        {"raw": post("/v1/messages?beta=true", host=f"127.0.0.1:{p}"), "want": 200},
        {"raw": post("/v1/messages"), "unix": True, "want": 200},
    ]
    wants = list(hostile.values()) + [r.pop("want") for r in requests[len(hostile) :]]
    try:
        got = (await attack(sandbox, "probe", {"requests": requests}))["results"]
        for (target, _), want, res in zip(
            list(hostile.items()) + [("extra", 0)] * 5, wants, got, strict=False
        ):
            assert res["status"] == want, (target, res)
        refused = [r for r in got if r["status"] >= 400]
        assert all('"type": "error"' in r["head"] or "error" in r["head"] for r in refused)
        assert trap.received == []  # nothing ever dialled the attacker's target
        seen = upstream.requests
        assert len(seen) == 2  # only the two allowed requests reached the upstream
        assert [r.path for r in seen] == ["/v1/messages", "/v1/messages"]
        assert all(r.api_key == HOST_KEY for r in seen)
    finally:
        await gw.close()


async def test_a_process_outside_the_container_is_refused(
    sandbox: Sandbox, upstream: FakeAnthropic
) -> None:
    """The socket file is reachable on the host (mode 0666 for the container user),
    but only processes of the sandbox's own container may use it."""
    gw = await _serve(sandbox, upstream.url, GatewayLimits())
    sock_path = Path(sandbox.control.control_dir) / "gateway.sock"
    try:
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(post("/v1/messages").encode())
        answer = await reader.read()  # until the gateway closes
        writer.close()
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert b"permission_error" in answer
        assert upstream.requests == []
        # The sandbox itself still gets through (the peer check accepts its processes).
        upstream.script(Turn.text("ok"))
        res = await attack(sandbox, "probe", {"requests": [{"raw": post("/v1/messages")}]})
        assert res["results"][0]["status"] == 200
        assert len(upstream.requests) == 1
    finally:
        await gw.close()


async def test_stalled_connections_hit_the_cap_and_hold_bounded_memory(
    sandbox: Sandbox,
) -> None:
    """Before the fix every stalled request body was buffered (20 pinned 1.3 GB) and
    idle connections were unbounded (21,000 exhausted the server's fds). Now a
    sandbox gets ``max_connections``; a big body is streamed, not buffered."""
    sink_bytes = [0]

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # An upstream that reads (and drops) the body and never answers.
        while chunk := await reader.read(MIB):
            sink_bytes[0] += len(chunk)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    cap, n, body = 12, 60, 6 * MIB
    gw = await _serve(sandbox, url, GatewayLimits(max_connections=cap, buffer_bytes=256 * 1024))
    listener = gw._served[sandbox.name]
    rss_before, fds_before = rss(), open_fds()
    args = {"n": n, "declared": 30 * MIB, "body": body, "expect_open": cap}
    proc = await sandbox.spawn(["python3", ATTACK_PATH, "flood", json.dumps(args)])
    try:
        out = b""
        async for event in proc.events():
            if isinstance(event, ProcessOutput) and event.stream == "stdout":
                out += event.data
                if b"\n" in out:
                    break
        report = json.loads(out.splitlines()[0])
        # Over the cap: a 503 and a close (a few 503s are lost to the TCP reset of a
        # client still sending its body; those are closed all the same).
        assert report["open"] == cap and report["refused"] >= 1, report
        assert listener.connections == cap
        # The held connections pushed cap * 6 MiB; the upstream got it, the host kept little.
        await eventually(lambda: _value(sink_bytes[0]), lambda v: v >= cap * (body - 256 * 1024))
        grew = rss() - rss_before
        assert grew < 40 * MIB, f"host RSS grew {grew / MIB:.1f} MiB for {cap * body / MIB} MiB"
        assert open_fds() - fds_before < 3 * cap + 10
    finally:
        await proc.write_stdin("done\n")
        await proc.wait(timeout=30)
        await eventually(lambda: _value(listener.connections), lambda v: v == 0)
        await gw.close()
        server.close()


async def _value(v: int) -> int:
    return v


async def test_slow_heads_idle_connections_and_stalled_bodies_time_out(
    sandbox: Sandbox, upstream: FakeAnthropic
) -> None:
    limits = GatewayLimits(header_timeout=1.0, idle_timeout=1.0, body_timeout=1.0)
    gw = await _serve(sandbox, upstream.url, limits)
    try:
        res = await attack(sandbox, "slow", {})
        assert res["trickle"] == {"status": 408, "ended": True}, res
        assert res["idle"] == {"status": 0, "bytes": 0}, res  # closed without a word
        assert res["stalled_body"] == {"status": 408}, res
        assert upstream.requests == []
        await eventually(lambda: _value(gw._served[sandbox.name].connections), lambda v: v == 0)
    finally:
        await gw.close()


async def test_a_flood_of_refusals_logs_a_handful_of_lines(
    sandbox: Sandbox, upstream: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    """72k identical tracebacks wrote 32 MB of log in 25 s: now each kind of
    complaint is logged a few times per minute."""
    caplog.set_level(logging.DEBUG, logger="agentvm.gateway")
    gw = await _serve(sandbox, upstream.url, GatewayLimits())
    try:
        bad = [{"raw": post("/v1/files")} for _ in range(150)]
        bad += [{"raw": "GARBAGE\x01\r\n\r\n"} for _ in range(150)]
        res = await attack(sandbox, "probe", {"requests": bad})
        assert {r["status"] for r in res["results"]} == {404, 400}
        sock_path = str(Path(sandbox.control.control_dir) / "gateway.sock")
        for _ in range(100):  # host-side peers, each refused
            reader, writer = await asyncio.open_unix_connection(sock_path)
            assert (await reader.read()).startswith(b"HTTP/1.1 403")
            writer.close()
        records = [r for r in caplog.records if r.name == "agentvm.gateway"]
        assert 0 < len(records) <= 20, [r.getMessage() for r in records]
    finally:
        await gw.close()
