"""The coding agent starts light (issue 13, item 1): a pre-started agent answers the
ACP handshake from its standard-library front (vm_images/coding_agent/front.py)
and loads the real agent (acp, anthropic) only once a session is created."""

from __future__ import annotations

import acp
import pytest

from host.gateway import LLMGateway
from host.sandbox import Sandbox
from host.sessions import MemoryEventStore, SessionManager
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.coding_agent import front
from vm_images.coding_agent.agent import CodingAgent

# A pre-started agent with acp and the model SDK imported holds ~80 MiB; the light
# front ~12 MiB. (A memory bound, not a timing one: it does not depend on load.)
IDLE_AGENT_MAX_KIB = 30 * 1024


async def test_front_answers_initialize_as_the_agent_does() -> None:
    assert front.PROTOCOL_VERSION == acp.PROTOCOL_VERSION
    for version in (1, 7):
        agent = CodingAgent(env={})
        real = await agent.initialize(protocol_version=version)
        await agent._preload_sdk()  # the import thread it started ends with this loop
        # As acp's connection sends a result:
        dumped = real.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
        assert front.initialize_result({"protocolVersion": version}) == dumped


def test_front_leaves_what_it_does_not_know_to_the_agent() -> None:
    f = front.Front()
    for line in (
        b'{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{}}',
        b'{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"relative"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"session/new",'
        b'"params":{"cwd":"/","mcpServers":[{"name":"x"}]}}',
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1"}}',
        b"not json",
    ):
        assert f.handle(line) == (None, True), line
    assert f.sessions == []
    reply, load = f.handle(b'{"jsonrpc":"2.0","id":2,"method":"session/new","params":{"cwd":"/"}}')
    assert reply is not None and b'"sessionId":"sess_' in reply and load


async def _rss_kib(sandbox: Sandbox, pid: int) -> int:
    status = (await sandbox.read_file(f"/proc/{pid}/status")).decode()
    [line] = [row for row in status.splitlines() if row.startswith("VmRSS:")]
    return int(line.split()[1])


@pytest.mark.docker
async def test_prestarted_agent_idles_small_and_serves_a_session(
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
        # Initialized, idle: the front only (the real agent is not imported).
        assert await _rss_kib(sandbox, pid) < IDLE_AGENT_MAX_KIB

        info = await manager.create_session("coding-agent", model="claude-test")
        assert info.agent_info is not None and info.agent_info["name"] == "agentvm-coding-agent"
        assert manager.sessions[info.session_id].record.pid == pid
        # Once a session exists the real agent loads (in the background) and answers.
        result = await manager.send_prompt(info.session_id, "hello")
        assert result.stop_reason == "end_turn" and result.text.endswith("light start")
        await eventually(
            lambda: _rss_kib(sandbox, pid), lambda kib: kib > IDLE_AGENT_MAX_KIB, what="loaded"
        )
    finally:
        await manager.close()
        await gw.close()
