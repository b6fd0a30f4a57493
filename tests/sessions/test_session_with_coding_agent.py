"""End to end with the bundled coding agent: session manager -> supervisor -> agent
-> gateway -> fake Anthropic (tests/support/fake_anthropic.py) and back."""

from __future__ import annotations

import threading

import pytest

from host.gateway import LLMGateway
from host.sandbox import Sandbox
from host.sessions import MemoryEventStore, SessionManager
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.bundles import BUNDLES

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif("coding-agent" not in BUNDLES, reason="no coding-agent bundle"),
]

BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\nassert add(2, 3) == 5, add(2, 3)\nprint('tests pass')\n"


@pytest.fixture
async def agent_gateway(
    fake_anthropic: FakeAnthropic, sandbox: Sandbox, host_key: str
) -> LLMGateway:
    gw = LLMGateway(api_key=host_key, upstream=fake_anthropic.url)
    await gw.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    yield gw  # type: ignore[misc]
    await gw.close()


async def test_a_session_fixes_a_real_bug(
    sandbox: Sandbox,
    fake_anthropic: FakeAnthropic,
    agent_gateway: LLMGateway,
    host_key: str,
    store: MemoryEventStore,
) -> None:
    await sandbox.write_files({"repo/calc.py": BUGGY, "repo/test_calc.py": TEST})
    assert (await sandbox.exec("python3 test_calc.py", cwd="repo")).exit_code != 0
    fake_anthropic.script(
        Turn.tool("read", {"path": "calc.py"}),
        Turn.tool("edit", {"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}),
        Turn.tool("bash", {"command": "python3 test_calc.py"}),
        Turn.text("Fixed", " the bug."),
    )
    manager = SessionManager(sandbox, store=store, host_api_key=host_key)
    try:
        info = await manager.create_session(
            "coding-agent",
            env={"ANTHROPIC_API_KEY": host_key},  # as the seeds do
            cwd="repo",
            model="claude-test",
            additional_instructions="Be brief.",
        )
        assert info.agent_info is not None and info.agent_info["name"] == "agentvm-coding-agent"
        result = await manager.send_prompt(info.session_id, "make the tests pass")
        assert result.stop_reason == "end_turn"
        assert result.text.endswith("Fixed the bug.")
        assert await sandbox.read_file("repo/calc.py") == b"def add(a, b):\n    return a + b\n"
        events = await manager.get_session_events(info.session_id)
        updates = [e.data for e in events if e.kind == "update"]
        calls = [u for u in updates if u["sessionUpdate"] == "tool_call"]
        assert [c["kind"] for c in calls] == ["read", "edit", "execute"]
        diffs = [
            c
            for u in updates
            if u["sessionUpdate"] == "tool_call_update"
            for c in u.get("content") or []
            if c.get("type") == "diff"
        ]
        assert diffs and diffs[0]["oldText"] == BUGGY and "a + b" in diffs[0]["newText"]
        # Every model call went through the gateway with the host's key injected.
        requests = fake_anthropic.message_requests()
        assert len(requests) == 4
        assert {r.api_key for r in requests} == {host_key}
        assert {r.headers.get("x-agentvm-session") for r in requests} == {None}
        assert requests[0].body["model"] == "claude-test"
        usage = agent_gateway.usage(sandbox.name)
        assert usage.sessions[info.session_id].requests == 4
        assert usage.sessions[info.session_id].output_tokens == 4 * 20
        await manager.close_session(info.session_id)
    finally:
        await manager.close()


async def test_cancel_mid_turn(
    sandbox: Sandbox,
    fake_anthropic: FakeAnthropic,
    agent_gateway: LLMGateway,
    host_key: str,
    store: MemoryEventStore,
) -> None:
    import asyncio

    gate = threading.Event()
    fake_anthropic.script(Turn.text("thinking about it", " for a long time", wait_for=gate))
    manager = SessionManager(sandbox, store=store, host_api_key=host_key)
    try:
        sid = (await manager.create_session("coding-agent")).session_id
        prompt = asyncio.create_task(manager.send_prompt(sid, "go"))
        deadline = asyncio.get_running_loop().time() + 20

        while not any(e.kind == "update" for e in await manager.get_session_events(sid)):
            assert asyncio.get_running_loop().time() < deadline, "no update arrived"
            await asyncio.sleep(0.05)
        await manager.cancel_prompt(sid)
        result = await prompt
        gate.set()
        assert result.stop_reason == "cancelled"
        await manager.close_session(sid)
    finally:
        gate.set()
        await manager.close()
