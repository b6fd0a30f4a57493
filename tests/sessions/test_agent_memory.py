"""The coding agent is light (issue 13, item 1): standard library only, so a
pre-started agent idles small *and* has everything its first prompt needs loaded
(no SDK import on the first prompt: bench/runs.py's per-run overhead)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import acp
import pytest
from acp import schema as S

from host.gateway import LLMGateway
from host.sandbox import Sandbox
from host.sessions import MemoryEventStore, SessionManager
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.coding_agent import agent as coding_agent

ROOT = Path(__file__).resolve().parents[2]
# A pre-started agent with acp and the model SDK imported held ~80 MiB; the
# standard-library agent ~12 MiB, before and after a turn. (A memory bound, not a
# timing one: it does not depend on load.)
AGENT_MAX_KIB = 30 * 1024


def test_initialize_answers_what_acp_validates() -> None:
    assert coding_agent.PROTOCOL_VERSION == acp.PROTOCOL_VERSION
    agent = coding_agent.CodingAgent(env={})
    for version in (1, 7):
        result = agent.initialize(version)
        parsed = S.InitializeResponse.model_validate(result)
        assert parsed.protocol_version == min(version, acp.PROTOCOL_VERSION)
        dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert dumped == result


async def test_bad_requests_get_json_rpc_errors() -> None:
    """Raw lines to the agent: unknown method, bad params, bad JSON each get an
    error answer naming the problem, and the agent goes on serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coding_agent",
        env={"PYTHONPATH": str(ROOT / "vm_images")},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines = [
        b'{"jsonrpc":"2.0","id":1,"method":"session/nope","params":{}}',
        b'{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"protocolVersion":"1"}}',
        b'{"jsonrpc":"2.0","id":3,"method":"session/new","params":{"cwd":"relative"}}',
        b'{"jsonrpc":"2.0","id":4,"method":"session/prompt","params":{"sessionId":"x","prompt":[]}}',
        b"not json",
        b'{"jsonrpc":"2.0","id":5,"method":"initialize","params":{"protocolVersion":1}}',
    ]
    try:
        proc.stdin.write(b"\n".join(lines) + b"\n")
        await proc.stdin.drain()
        answers = {}
        async with asyncio.timeout(30):
            while len(answers) < len(lines):
                msg = json.loads(await proc.stdout.readline())
                answers[msg["id"]] = msg
    finally:
        proc.stdin.close()
        await proc.wait()
    assert answers[1]["error"]["code"] == -32601
    assert (
        answers[2]["error"]["code"] == -32602 and "protocolVersion" in answers[2]["error"]["data"]
    )
    assert answers[3]["error"]["code"] == -32602 and "cwd" in answers[3]["error"]["data"]
    assert answers[4]["error"]["code"] == -32602 and "sessionId" in answers[4]["error"]["data"]
    assert answers[None]["error"]["code"] == -32700
    assert answers[5]["result"]["agentInfo"]["name"] == "agentvm-coding-agent"


async def _rss_kib(sandbox: Sandbox, pid: int) -> int:
    status = (await sandbox.read_file(f"/proc/{pid}/status")).decode()
    [line] = [row for row in status.splitlines() if row.startswith("VmRSS:")]
    return int(line.split()[1])


@pytest.mark.docker
async def test_prestarted_agent_is_small_and_ready_for_its_first_prompt(
    sandbox: Sandbox,
    fake_anthropic: FakeAnthropic,
    host_key: str,
    store: MemoryEventStore,
) -> None:
    gw = LLMGateway(api_key=host_key, upstream=fake_anthropic.url)
    await gw.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    fake_anthropic.script(Turn.text("light", " start"))
    manager = SessionManager(sandbox, store=store, host_api_key=host_key, prestart=["coding-agent"])
    try:
        manager.warm_up()
        await manager.wait_prestarted()
        [pid] = manager.agent_pids()
        idle_kib = await _rss_kib(sandbox, pid)
        assert idle_kib < AGENT_MAX_KIB

        info = await manager.create_session("coding-agent", model="claude-test")
        assert info.agent_info is not None and info.agent_info["name"] == "agentvm-coding-agent"
        assert manager.sessions[info.session_id].record.pid == pid
        result = await manager.send_prompt(info.session_id, "hello")
        assert result.stop_reason == "end_turn" and result.text.endswith("light start")
        # The turn loaded nothing heavy (the SDKs alone were ~70 MiB): still small.
        assert await _rss_kib(sandbox, pid) < AGENT_MAX_KIB
    finally:
        await manager.close()
        await gw.close()
