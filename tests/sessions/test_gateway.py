"""The LLM gateway: in-sandbox loopback endpoint -> host unix socket -> upstream."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest
from sessions_stub import INPUT_TOKENS, OUTPUT_TOKENS, StubUpstream, sse_body

from host.gateway import LLMGateway
from host.sandbox import Sandbox
from tests.support import eventually

pytestmark = pytest.mark.docker

BODY = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def curl(body: dict[str, object], *headers: str) -> str:
    """A curl command run inside the sandbox against $ANTHROPIC_BASE_URL."""
    hs = " ".join(f"-H '{h}'" for h in ("content-type: application/json", *headers))
    return (
        f"curl -sS -N -D /tmp/headers -o /tmp/body -w '%{{http_code}}' {hs} "
        f"--data '{json.dumps(body)}' \"$ANTHROPIC_BASE_URL/v1/messages\""
    )


async def test_sandbox_processes_get_the_gateway_url(sandbox: Sandbox) -> None:
    res = await sandbox.exec("echo $ANTHROPIC_BASE_URL $ANTHROPIC_API_KEY")
    assert res.stdout.strip() == "http://127.0.0.1:4141 agentvm-gateway"


async def test_without_a_gateway_the_sandbox_gets_a_clear_503(sandbox: Sandbox) -> None:
    res = await sandbox.exec(curl(BODY))
    assert res.stdout == "503"
    body = json.loads(await sandbox.read_file("/tmp/body"))
    assert body["type"] == "error" and "gateway unavailable" in body["error"]["message"]


async def test_a_model_call_waits_for_a_host_that_died_and_goes_through(
    sandbox: Sandbox, gateway: LLMGateway, upstream: StubUpstream
) -> None:
    """A host killed with -9 leaves its gateway.sock behind (connections refused):
    the in-sandbox forwarder holds the request and retries until a host serves the
    gateway again, instead of answering 503 at once."""
    path = Path(sandbox.control.control_dir) / "gateway.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    os.chmod(path, 0o666)
    stale.close()  # the file stays; nobody listens
    request = asyncio.create_task(sandbox.exec(curl(BODY)))

    async def connected() -> str:
        # The client's connection to the forwarder (port 4141 = 0x102D) is open.
        return (await sandbox.exec("cat /proc/net/tcp")).stdout

    await eventually(connected, lambda tcp: ":102D " in tcp and " 01 " in tcp, timeout=30)
    assert not request.done()
    await gateway.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    try:
        res = await asyncio.wait_for(request, 60)
        assert res.stdout == "200", res
        assert len(upstream.requests) == 1
    finally:
        await gateway.stop(sandbox.name)


async def test_streaming_pass_through_key_injection_and_usage(
    sandbox: Sandbox, served: LLMGateway, upstream: StubUpstream, host_key: str
) -> None:
    res = await sandbox.exec(curl({**BODY, "stream": True}, "x-agentvm-session: s-one"))
    assert res.stdout == "200", res
    # The SSE bytes arrive exactly as the upstream sent them.
    assert await sandbox.read_file("/tmp/body") == sse_body()
    headers = (await sandbox.read_file("/tmp/headers")).decode().lower()
    assert "content-type: text/event-stream" in headers
    seen = upstream.requests[-1]
    assert seen.headers["x-api-key"] == host_key  # injected for the placeholder
    assert "x-agentvm-session" not in seen.headers  # ours, not forwarded
    assert seen.body == {**BODY, "stream": True}
    report = served.usage(sandbox.name)
    assert report.total.input_tokens == INPUT_TOKENS
    assert report.total.output_tokens == OUTPUT_TOKENS
    assert report.total.requests == 1
    assert report.sessions["s-one"].output_tokens == OUTPUT_TOKENS


async def test_json_usage_per_session_and_the_callers_own_key(
    sandbox: Sandbox, served: LLMGateway, upstream: StubUpstream
) -> None:
    records = []
    served.on_usage = records.append
    for session in ("a", "a", "b"):
        res = await sandbox.exec(curl(BODY, f"x-agentvm-session: {session}"))
        assert res.stdout == "200"
        assert json.loads(await sandbox.read_file("/tmp/body"))["usage"]["input_tokens"] == 11
    res = await sandbox.exec(curl(BODY, "x-api-key: sk-callers-own"))
    assert res.stdout == "200"
    assert upstream.requests[-1].headers["x-api-key"] == "sk-callers-own"
    report = served.usage(sandbox.name)
    assert report.total.requests == 4
    assert report.total.total_tokens == 4 * (INPUT_TOKENS + OUTPUT_TOKENS)
    assert report.sessions["a"].requests == 2 and report.sessions["b"].requests == 1
    assert [r.session_id for r in records] == ["a", "a", "b", None]
    assert records[0].model == "claude-x" and not records[0].stream


async def test_budget_exhausted_is_a_clear_429(
    sandbox: Sandbox, gateway: LLMGateway, upstream: StubUpstream
) -> None:
    await gateway.serve(
        sandbox.name, sandbox.control.control_dir, container=sandbox.id, budget_tokens=20
    )
    assert (await sandbox.exec(curl(BODY))).stdout == "200"  # 18 tokens: under budget
    assert (await sandbox.exec(curl(BODY))).stdout == "200"  # 18 < 20: allowed, now 36
    res = await sandbox.exec(curl(BODY))
    assert res.stdout == "429"
    body = json.loads(await sandbox.read_file("/tmp/body"))
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "budget" in body["error"]["message"] and "budget_tokens=20" in body["error"]["message"]
    headers = (await sandbox.read_file("/tmp/headers")).decode().lower()
    assert "x-should-retry: false" in headers
    assert len(upstream.requests) == 2  # the refused call never reached the upstream
    report = gateway.usage(sandbox.name)
    assert report.budget_tokens == 20 and report.remaining_tokens == 0
    gateway.set_budget(sandbox.name, None)
    assert (await sandbox.exec(curl(BODY))).stdout == "200"
