"""The coding agent's MCP servers, tool control, single_shot mode and history hand-over:
the agent as a local subprocess over ACP against the fake model (the sandbox run is
in tests/vm/test_session_features.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import acp
import pytest
from acp import schema as S
from acp.client.connection import ClientSideConnection
from agent_helpers import RecordingClient, agent_env, local_agent

from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn

SERVER = Path(__file__).with_name("mcp_probe_server.py")
Start = Callable[..., AbstractAsyncContextManager[ClientSideConnection]]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "notes.txt").write_text("hello\n")
    return root


@pytest.fixture
def start(fake_anthropic: FakeAnthropic, tmp_path: Path) -> Start:
    def factory(client: RecordingClient) -> Any:
        return local_agent(
            client, agent_env(fake_anthropic.url), stderr_path=tmp_path / "agent.err"
        )

    return factory


def stdio_probe(name: str = "probe") -> S.McpServerStdio:
    return S.McpServerStdio(name=name, command=sys.executable, args=[str(SERVER)], env=[])


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["name"] for t in body.get("tools", [])]


async def test_a_stdio_mcp_tool_is_offered_called_and_its_result_reaches_the_model(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        Turn.tool("mcp__probe__probe", {"word": "kiwi"}),
        Turn.text("The probe answered."),
    )
    client = RecordingClient()
    async with start(client) as conn:
        caps = (await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)).agent_capabilities
        assert caps is not None and caps.mcp_capabilities is not None
        assert caps.mcp_capabilities.http is True
        sid = (await conn.new_session(cwd=str(repo), mcp_servers=[stdio_probe()])).session_id
        result = await conn.prompt(session_id=sid, prompt=[acp.text_block("use the probe")])
        assert result.stop_reason == "end_turn"
    first, second = fake_anthropic.message_requests()
    names = tool_names(first.body)
    assert "mcp__probe__probe" in names and "bash" in names
    probe = next(t for t in first.body["tools"] if t["name"] == "mcp__probe__probe")
    assert probe["input_schema"]["properties"] == {"word": {"type": "string"}}
    [tool_result] = second.tool_results().values()
    assert tool_result["content"].startswith("probe:kiwi:")
    assert tool_result["content"].endswith(f":{repo}")  # ran in the session's cwd
    assert (repo / "mcp_probe_ran").read_text().startswith("probe:kiwi:")
    [done] = [u for u in client.of("tool_call_update") if u.status == "completed"]
    assert done.raw_output["mcp_server"] == "probe"


@pytest.fixture
def http_probe(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)], cwd=tmp_path)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


async def test_an_http_mcp_server_over_streamable_http(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic, http_probe: str, tmp_path: Path
) -> None:
    fake_anthropic.script(Turn.tool("mcp__web__probe", {"word": "fig"}), Turn.text("ok"))
    server = S.HttpMcpServer(type="http", name="web", url=http_probe, headers=[])

    async def new_session(conn: ClientSideConnection) -> str:
        # The server process may still be binding its port.
        for _ in range(100):
            try:
                return (await conn.new_session(cwd=str(repo), mcp_servers=[server])).session_id
            except acp.RequestError:
                await asyncio.sleep(0.1)
        raise AssertionError("the HTTP MCP server never answered")

    async with start(RecordingClient()) as conn:
        sid = await new_session(conn)
        await conn.prompt(session_id=sid, prompt=[acp.text_block("probe")])
    [result] = fake_anthropic.message_requests()[1].tool_results().values()
    assert result["content"].startswith("probe:fig:")
    assert (tmp_path / "mcp_probe_ran").exists()


async def test_a_broken_mcp_server_fails_session_new_naming_it(start: Start, repo: Path) -> None:
    bad = S.McpServerStdio(name="nope", command="/does/not/exist", args=[], env=[])
    async with start(RecordingClient()) as conn:
        with pytest.raises(acp.RequestError) as err:
            await conn.new_session(cwd=str(repo), mcp_servers=[bad])
    assert "nope" in str(err.value.data)


async def test_allowed_and_disallowed_tools_shape_the_tool_list_and_calls(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    # The model calls bash although it was not offered: the agent refuses to run it.
    fake_anthropic.script(
        Turn.tool("bash", {"command": "touch ran_bash"}), Turn.text("ok"), marker="[one]"
    )
    fake_anthropic.script(Turn.text("ok"), marker="[two]")
    async with start(RecordingClient()) as conn:
        one = await conn.new_session(
            cwd=str(repo),
            mcp_servers=[stdio_probe()],
            agentvm={"allowedTools": ["read", "grep", "mcp__probe"], "disallowedTools": ["grep"]},
        )
        await conn.prompt(session_id=one.session_id, prompt=[acp.text_block("[one] go")])
        two = await conn.new_session(cwd=str(repo), agentvm={"disallowedTools": ["bash", "w*"]})
        await conn.prompt(session_id=two.session_id, prompt=[acp.text_block("[two] go")])
    first, second, third = fake_anthropic.message_requests()
    assert tool_names(first.body) == ["read", "mcp__probe__probe"]
    [refused] = second.tool_results().values()
    assert refused.get("is_error") and "not available" in refused["content"]
    assert not (repo / "ran_bash").exists()
    assert tool_names(third.body) == ["read", "edit", "glob", "grep"]


async def test_single_shot_sends_no_tools_and_ends_after_one_answer(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.text("Just one answer."))
    client = RecordingClient()
    async with start(client) as conn:
        sid = (
            await conn.new_session(
                cwd=str(repo), mcp_servers=[stdio_probe()], agentvm={"mode": "single_shot"}
            )
        ).session_id
        result = await conn.prompt(session_id=sid, prompt=[acp.text_block("summarise")])
        assert result.stop_reason == "end_turn"
        with pytest.raises(acp.RequestError):
            await conn.new_session(cwd=str(repo), agentvm={"mode": "chatty"})
    [request] = fake_anthropic.message_requests()
    assert "tools" not in request.body
    assert client.text() == "Just one answer."


async def test_history_in_meta_becomes_the_conversation(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.text("It is PLUM."))
    history = [
        {"role": "user", "content": "the codeword is PLUM"},
        {"role": "assistant", "content": "Noted."},
    ]
    async with start(RecordingClient()) as conn:
        sid = (await conn.new_session(cwd=str(repo), agentvm={"history": history})).session_id
        await conn.prompt(session_id=sid, prompt=[acp.text_block("what is the codeword?")])
        with pytest.raises(acp.RequestError):
            await conn.new_session(cwd=str(repo), agentvm={"history": [{"role": "system"}]})
    [request] = fake_anthropic.message_requests()
    texts = [(m["role"], [b["text"] for b in m["content"]]) for m in request.messages]
    assert texts == [
        ("user", ["the codeword is PLUM"]),
        ("assistant", ["Noted."]),
        ("user", ["what is the codeword?"]),
    ]


async def test_closing_the_session_stops_its_stdio_mcp_server(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    async with start(RecordingClient()) as conn:
        sid = (await conn.new_session(cwd=str(repo), mcp_servers=[stdio_probe()])).session_id

        async def servers() -> list[str]:
            proc = await asyncio.create_subprocess_exec(
                "pgrep", "-f", str(SERVER), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            return out.decode().split()

        assert await servers()
        await conn.close_session(session_id=sid)
        await eventually(servers, lambda pids: not pids, timeout=20)
