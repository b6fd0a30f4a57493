"""Session features through the vm actor, in a real container with the bundled coding
agent and the host's gateway (the fake model is the only fake): MCP servers run
inside the sandbox, tool control and single_shot, resume and fork from the stored
transcript, session limits, stats and prune (also over HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from host.server.app import create_app
from host.sessions.errors import ResumeUnsupported, TooManySessions
from orchestrator.errors import InvalidRequest
from tests.support.fake_anthropic import FakeAnthropic, Turn

from . import test_vm_sessions as base
from .test_vm_sessions import HostFactory

# The vm session tests' fixtures (a gateway, the agent image, the vm actor).
agent_image = base.agent_image
session_host = base.session_host

pytestmark = pytest.mark.docker

PROBE = Path(__file__).parents[1] / "agent" / "mcp_probe_server.py"


def texts(request: Any) -> str:
    """Every text of a recorded model request's messages."""
    out = []
    for m in request.messages:
        content = m["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out.extend(str(b.get("text") or b.get("content") or "") for b in content)
    return "\n".join(out)


async def test_an_mcp_server_runs_inside_the_sandbox_and_the_agent_calls_its_tool(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        Turn.tool("mcp__probe__probe", {"word": "kiwi"}), Turn.text("Probed."), marker="[mcp]"
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["feat", "mcp"])
        await vm.write_file("tools/probe.py", PROBE.read_bytes(), parents=True)
        server = {"name": "probe", "command": "python3", "args": ["/home/user/tools/probe.py"]}
        with pytest.raises(InvalidRequest) as bad:
            await vm.create_session("coding-agent", mcp_servers=[{"name": "probe", "args": []}])
        assert bad.value.metadata["field"] == "mcp_servers.0.command"
        with pytest.raises(InvalidRequest) as bad:
            await vm.create_session("coding-agent", mcp_servers=[{"type": "sse", "name": "x"}])
        assert bad.value.metadata["field"] == "mcp_servers.0.type"
        info = await vm.create_session("coding-agent", cwd="work", mcp_servers=[server])
        result = await vm.send_prompt(info["session_id"], "[mcp] use the probe")
        assert result["stop_reason"] == "end_turn"
        first, second = fake_anthropic.message_requests()
        assert "mcp__probe__probe" in [t["name"] for t in first.body["tools"]]
        [answer] = second.tool_results().values()
        word, host, cwd = answer["content"].split(":")[1:]
        assert (word, cwd) == ("kiwi", "/home/user/work")
        hostname = (await vm.exec("hostname"))["stdout"].strip()
        assert host == (hostname.decode() if isinstance(hostname, bytes) else hostname)
        ran = await vm.read_file("work/mcp_probe_ran")
        assert ran.decode().startswith("probe:kiwi:")
        await vm.close_session(info["session_id"])


async def test_tool_control_and_single_shot_show_in_the_model_request(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.text("limited"), marker="[limited]")
    fake_anthropic.script(Turn.text("one answer"), marker="[single]")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["feat", "tools"])
        limited = await vm.create_session(
            "coding-agent", allowed_tools=["read", "grep", "bash"], disallowed_tools=["bash"]
        )
        await vm.send_prompt(limited["session_id"], "[limited] look around")
        single = await vm.create_session("coding-agent", mode="single_shot")
        result = await vm.send_prompt(single["session_id"], "[single] summarise")
        assert result["text"] == "one answer"
        with pytest.raises(InvalidRequest):
            await vm.create_session("coding-agent", mode="chatty")
    one, two = fake_anthropic.message_requests()
    assert [t["name"] for t in one.body["tools"]] == ["read", "grep"]
    assert "tools" not in two.body


async def test_resume_continues_a_closed_conversation_and_a_fork_diverges(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.fallback = Turn.text("Noted.")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["feat", "resume"])
        first = (await vm.create_session("coding-agent", model="claude-resume"))["session_id"]
        await vm.send_prompt(first, "the codeword is MANGO")
        with pytest.raises(ResumeUnsupported):  # still open
            await vm.resume_session(first)
        await vm.close_session(first)

        resumed = await vm.resume_session(first)
        assert resumed["resumed_from"] == first
        second = resumed["session_id"]
        await vm.send_prompt(second, "what was the codeword?")
        request = fake_anthropic.message_requests()[-1]
        assert request.body["model"] == "claude-resume"  # same options
        seen = texts(request)
        assert "the codeword is MANGO" in seen and "Noted." in seen
        assert seen.index("MANGO") < seen.index("what was the codeword?")
        events = await vm.get_session_events(second)
        assert events[0]["kind"] == "history" and events[0]["data"]["from"] == first

        fork = await vm.fork_session(second)
        assert fork["forked_from"] == second
        await vm.send_prompt(fork["session_id"], "forget it, the codeword is LIME")
        fork_request = fake_anthropic.message_requests()[-1]
        assert "what was the codeword?" in texts(fork_request)  # the copied conversation
        await vm.send_prompt(second, "and again?")
        original = fake_anthropic.message_requests()[-1]
        assert "LIME" not in texts(original) and "MANGO" in texts(original)

        # A resume after the vm forgot it (here: a session that never existed).
        with pytest.raises(Exception) as missing:
            await vm.resume_session("s-0000000000000000")
        assert "no session" in str(missing.value)


async def test_limits_stats_and_prune(
    session_host: HostFactory, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTVM_MAX_SESSIONS_PER_VM", "2")
    monkeypatch.setenv("AGENTVM_MAX_SESSIONS", "3")
    fake_anthropic.fallback = Turn.text("ok")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["feat", "limits"])
        a = (await vm.create_session("coding-agent"))["session_id"]
        b = (await vm.create_session("coding-agent"))["session_id"]
        with pytest.raises(TooManySessions) as full:
            await vm.create_session("coding-agent")
        assert full.value.metadata["limit"] == "AGENTVM_MAX_SESSIONS_PER_VM"
        assert full.value.http_status == 429
        other = h.client.vm.get_or_create(["feat", "limits-2"])
        await other.create_session("coding-agent")
        with pytest.raises(TooManySessions) as host_full:
            await other.create_session("coding-agent")
        assert host_full.value.metadata["limit"] == "AGENTVM_MAX_SESSIONS"

        await vm.send_prompt(a, "hello")
        stats = await vm.session_stats()
        assert stats == {"open": 2, "prompting": 0, "idle": 2, "tokens": 120, "limit": 2}

        app = create_app(h.engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            resp = await http.get("/sessions/stats")
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"open": 3, "prompting": 0, "idle": 3, "tokens": 120, "limit": 3}

        with pytest.raises(InvalidRequest):
            await vm.prune_sessions(older_than=-1)
        assert await vm.prune_sessions(older_than=3600) == []
        assert sorted(await vm.prune_sessions(older_than=0)) == sorted([a, b])
        assert (await vm.session_stats())["open"] == 0
        # Room again: the limit counts open sessions only.
        await vm.create_session("coding-agent")


async def test_retention_compacts_a_closed_log_and_resume_still_works(
    session_host: HostFactory, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTVM_SESSION_RETENTION", "0")  # compact at once
    fake_anthropic.fallback = Turn.text("Noted.")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["feat", "compact"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        await vm.send_prompt(sid, "the codeword is KIWI")
        await vm.close_session(sid)
        before = await vm.get_session_events(sid)
        assert len(before) > 2

        # What the durable retention schedule calls once the retention has passed.
        assert await vm.expire_closed_sessions() == [sid]
        after = await vm.get_session_events(sid)
        assert [e["kind"] for e in after] == ["transcript"]
        assert after[0]["seq"] == before[-1]["seq"]  # numbering stays consistent
        assert "KIWI" in str(after[0]["data"]["messages"])
        assert await vm.get_session_events(sid, {"since": after[0]["seq"]}) == []
        assert await vm.expire_closed_sessions() == []  # compacted once

        resumed = (await vm.resume_session(sid))["session_id"]
        await vm.send_prompt(resumed, "what was the codeword?")
        seen = texts(fake_anthropic.message_requests()[-1])
        assert "the codeword is KIWI" in seen and "Noted." in seen
