"""The coding agent as a local subprocess, driven over ACP, against the fake model."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import acp
import pytest
from acp import schema as S
from acp.client.connection import ClientSideConnection
from agent_helpers import RecordingClient, agent_env, local_agent

from tests.support.fake_anthropic import FakeAnthropic, Turn, tool_use

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"

Start = Callable[..., AbstractAsyncContextManager[ClientSideConnection]]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(BUGGY)
    (root / "test_calc.py").write_text("from calc import add\nassert add(2, 3) == 5\n")
    return root


@pytest.fixture
def start(fake_anthropic: FakeAnthropic, tmp_path: Path) -> Start:
    def factory(client: RecordingClient, **env: str) -> Any:
        return local_agent(
            client, agent_env(fake_anthropic.url, **env), stderr_path=tmp_path / "agent.err"
        )

    return factory


async def test_initialize_and_new_session(start: Start, repo: Path) -> None:
    client = RecordingClient()
    async with start(client) as conn:
        init = await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
        assert init.protocol_version == acp.PROTOCOL_VERSION
        assert init.agent_info is not None and init.agent_info.name == "agentvm-coding-agent"
        caps = init.agent_capabilities
        assert caps is not None and caps.prompt_capabilities is not None
        assert caps.prompt_capabilities.embedded_context is True
        first = await conn.new_session(cwd=str(repo))
        second = await conn.new_session(cwd=str(repo))
        assert first.session_id != second.session_id
        with pytest.raises(acp.RequestError):
            await conn.new_session(cwd="relative/path")
        with pytest.raises(acp.RequestError):
            await conn.new_session(cwd=str(repo), agentvm={"permissionMode": "sometimes"})


async def test_a_prompt_reads_edits_runs_and_answers(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    read = tool_use("read", {"path": "calc.py"})
    edit = tool_use(
        "edit",
        {"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"},
    )
    test = tool_use("bash", {"command": f"{sys.executable} test_calc.py && echo PASSED"})
    fake_anthropic.script(
        Turn([read], usage={"input_tokens": 50, "output_tokens": 10}),
        Turn.tools(edit, say="Found it: subtraction."),
        Turn([test]),
        Turn.text("Fixed ", "the bug", "."),
        marker="[fix-calc]",
    )
    client = RecordingClient()
    env = {"AGENTVM_SESSION_ID": "host-session-7", "AGENTVM_MODEL": "env-model"}
    async with start(client, **env) as conn:
        meta = {"model": "claude-test", "instructions": "Always run the tests."}
        session = await conn.new_session(cwd=str(repo), agentvm=meta)
        result = await conn.prompt(
            session_id=session.session_id, prompt=[acp.text_block("[fix-calc] add is broken")]
        )

    assert result.stop_reason == "end_turn"
    assert (repo / "calc.py").read_text() == FIXED
    assert client.text() == "Found it: subtraction.Fixed the bug."
    # streamed, not in one piece
    assert [u.content.text for u in client.of("agent_message_chunk")][-3:] == [
        "Fixed ",
        "the bug",
        ".",
    ]

    # tool calls: announced, run, completed; the edit carries a diff
    starts = client.of("tool_call")
    assert [(u.tool_call_id, u.kind, u.status) for u in starts] == [
        (read.id, "read", "pending"),
        (edit.id, "edit", "pending"),
        (test.id, "execute", "pending"),
    ]
    assert starts[1].title == "Edit calc.py"
    assert starts[1].locations[0].path == str(repo / "calc.py")
    statuses = [u.status for u in client.tool_updates(edit.id)]
    assert statuses == ["pending", "in_progress", "completed"]
    done = client.tool_updates(edit.id)[-1]
    [diff] = [c for c in done.content if c.type == "diff"]
    assert (diff.path, diff.old_text, diff.new_text) == (str(repo / "calc.py"), BUGGY, FIXED)
    assert "-    return a - b\n+    return a + b" in done.raw_output["diff"]
    bash_done = client.tool_updates(test.id)[-1]
    assert bash_done.status == "completed"
    assert "PASSED" in bash_done.content[0].content.text

    # usage: one update per model response, cumulative totals in _meta
    usage = client.of("usage_update")
    assert len(usage) == 4
    assert usage[0].used == 60 and usage[0].size == 200_000
    assert usage[-1].field_meta["agentvm"]["requests"] == 4
    assert usage[-1].field_meta["agentvm"]["inputTokens"] == 50 + 3 * 100
    assert result.usage is not None and result.usage.output_tokens == 10 + 3 * 20

    # what the model saw
    reqs = fake_anthropic.message_requests()
    assert len(reqs) == 4
    first = reqs[0]
    assert first.body["model"] == "claude-test"  # _meta wins over the environment
    assert first.body["stream"] is True
    assert "Always run the tests." in first.body["system"]
    assert str(repo) in first.body["system"]
    assert {t["name"] for t in first.body["tools"]} == {
        "bash",
        "read",
        "write",
        "edit",
        "glob",
        "grep",
    }
    assert all(r.headers["x-agentvm-session"] == "host-session-7" for r in reqs)
    assert all(r.api_key == "agentvm-gateway" for r in reqs)  # placeholder: no key in env
    read_result = reqs[1].tool_results()[read.id]
    assert "     2\t    return a - b" in read_result["content"]
    assert "is_error" not in read_result
    assert "+    return a + b" in reqs[2].tool_results()[edit.id]["content"]
    assert "PASSED" in reqs[3].tool_results()[test.id]["content"]
    # the conversation alternates user/assistant and ends with the tool results
    roles = [m["role"] for m in reqs[3].messages]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]


async def test_session_id_header_defaults_to_the_acp_session(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.text("hi"))
    client = RecordingClient()
    async with start(client, ANTHROPIC_API_KEY="sk-inside") as conn:
        session = await conn.new_session(cwd=str(repo))
        await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("hello")])
    [req] = fake_anthropic.message_requests()
    assert req.headers["x-agentvm-session"] == session.session_id
    assert req.api_key == "sk-inside"


async def test_cancel_while_the_model_streams(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    gate = fake_anthropic.gate()
    fake_anthropic.script(
        Turn.text("Let me think", " about this...", wait_for=gate),
        Turn.text("Second prompt answered."),
    )
    client = RecordingClient()
    async with start(client) as conn:
        session = await conn.new_session(cwd=str(repo))
        sid = session.session_id
        running = asyncio.create_task(
            conn.prompt(session_id=sid, prompt=[acp.text_block("think hard")])
        )
        await client.wait_for(lambda u: u.session_update == "agent_message_chunk")
        assert not running.done()
        await conn.cancel(session_id=sid)
        result = await asyncio.wait_for(running, 20)
        assert result.stop_reason == "cancelled"
        gate.set()
        # the session is still usable, and its history stays valid
        again = await conn.prompt(session_id=sid, prompt=[acp.text_block("go on")])
    assert again.stop_reason == "end_turn"
    assert client.text().endswith("Second prompt answered.")
    last = fake_anthropic.message_requests()[-1]
    assert [m["role"] for m in last.messages] == ["user"]
    texts = [b["text"] for b in last.messages[0]["content"]]
    assert texts == ["think hard", "go on"]


async def test_cancel_kills_a_running_command(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    # a unique duration identifies the sleep (and its bash parent) in ps
    marker = f"sleep 600.{uuid.uuid4().int % 10**6:06d}"
    sleeper = tool_use("bash", {"command": f"{marker}; echo done"})
    fake_anthropic.script(Turn([sleeper]), Turn.text("after"))
    client = RecordingClient()
    async with start(client, AGENTVM_PERMISSION_MODE="allow") as conn:
        session = await conn.new_session(cwd=str(repo))
        sid = session.session_id
        running = asyncio.create_task(conn.prompt(session_id=sid, prompt=[acp.text_block("sleep")]))
        await client.wait_for(
            lambda u: u.session_update == "tool_call_update" and u.status == "in_progress"
        )
        await _until(lambda: _running(marker), "the command to start")
        await conn.cancel(session_id=sid)
        result = await asyncio.wait_for(running, 20)
        assert result.stop_reason == "cancelled"
        assert client.tool_updates(sleeper.id)[-1].status == "failed"
        await _until(lambda: not _running(marker), "the command to be killed")
        again = await conn.prompt(session_id=sid, prompt=[acp.text_block("next")])
    assert again.stop_reason == "end_turn"
    # the interrupted call got a tool_result, so the API accepts the history
    last = fake_anthropic.message_requests()[-1]
    result_block = last.messages[2]["content"][0]
    assert result_block["tool_use_id"] == sleeper.id and result_block["is_error"] is True


async def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _running(marker: str) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any(marker in line and "ps -eo" not in line for line in out.splitlines())


async def test_turn_limit_stops_the_loop(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(*[Turn.tool("glob", {"pattern": "*.py"}) for _ in range(5)])
    client = RecordingClient()
    async with start(client) as conn:
        session = await conn.new_session(cwd=str(repo), agentvm={"maxTurns": 2})
        result = await conn.prompt(
            session_id=session.session_id, prompt=[acp.text_block("loop forever")]
        )
    assert result.stop_reason == "max_turn_requests"
    assert len(fake_anthropic.message_requests()) == 2
    assert len(client.of("tool_call")) == 2


async def test_permission_requests_reject_and_always(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    edit = {"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
    first = tool_use("edit", edit)
    fake_anthropic.script(Turn([first]), Turn.text("ok"), marker="[reject]")
    client = RecordingClient(reply="reject_once")
    async with start(client) as conn:
        session = await conn.new_session(cwd=str(repo))
        await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("[reject]")])
        assert (repo / "calc.py").read_text() == BUGGY  # not run
        assert client.tool_updates(first.id)[-1].status == "failed"
        [(call, options)] = client.permission_requests
        assert call.tool_call_id == first.id
        assert {o.kind for o in options} >= {"allow_once", "allow_always", "reject_once"}
        assert fake_anthropic.message_requests()[-1].tool_results()[first.id]["is_error"]

        # allow_always is remembered for the tool: two writes, one question
        client.reply = "allow_always"
        client.permission_requests.clear()
        w1 = tool_use("write", {"path": "out/one.txt", "content": "1\n"})
        w2 = tool_use("write", {"path": "out/two.txt", "content": "2\n"})
        reads = tool_use("read", {"path": "out/one.txt"})
        fake_anthropic.script(Turn([w1]), Turn([w2, reads]), Turn.text("done"), marker="[w]")
        await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("[w]")])
    assert (repo / "out" / "two.txt").read_text() == "2\n"
    assert len(client.permission_requests) == 1  # reads are never asked about
    [diff] = client.tool_updates(w1.id)[-1].content
    assert (diff.type, diff.old_text, diff.new_text) == ("diff", None, "1\n")


async def test_a_cancelled_permission_request_cancels_the_prompt(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    call = tool_use("bash", {"command": "touch should-not-exist"})
    fake_anthropic.script(Turn([call]))
    client = RecordingClient(reply="cancelled")
    async with start(client) as conn:
        session = await conn.new_session(cwd=str(repo))
        result = await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("x")])
    assert result.stop_reason == "cancelled"
    assert not (repo / "should-not-exist").exists()


async def test_model_errors_fail_the_prompt_clearly(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.fail(400, "invalid_request_error", "bad tools"))
    client = RecordingClient()
    async with start(client) as conn:
        session = await conn.new_session(cwd=str(repo))
        with pytest.raises(acp.RequestError) as info:
            await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("x")])
        assert "bad tools" in str(info.value.data)
        # and the session goes on
        fake_anthropic.script(Turn.text("fine now"))
        result = await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("y")])
    assert result.stop_reason == "end_turn"


async def test_embedded_context_and_max_tokens_stop(
    start: Start, repo: Path, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.text("trunc", stop_reason="max_tokens"))
    client = RecordingClient()
    async with start(client) as conn:
        session = await conn.new_session(cwd=str(repo))
        resource = S.EmbeddedResourceContentBlock(
            type="resource",
            resource=S.TextResourceContents(uri="file:///notes.md", text="remember me"),
        )
        result = await conn.prompt(
            session_id=session.session_id, prompt=[acp.text_block("see notes"), resource]
        )
    assert result.stop_reason == "max_tokens"
    [req] = fake_anthropic.message_requests()
    texts = [b["text"] for b in req.messages[0]["content"]]
    assert texts[0] == "see notes" and "remember me" in texts[1]


async def _splice_to(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one unix-socket connection to 127.0.0.1:port and back (a stand-in for the
    host's gateway socket)."""
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
        dst.close()

    await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_model_calls_go_straight_to_the_gateway_socket(
    repo: Path, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    """With the loopback gateway URL (the supervisor's default) and the gateway socket
    present, the agent calls the model over the socket: here nothing listens on the
    loopback port at all, and the turn still reaches the model."""
    port = int(fake_anthropic.url.rsplit(":", 1)[1])
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _splice_to(port, reader, writer)

    path = tmp_path / "gw.sock"
    server = await asyncio.start_unix_server(handle, str(path))
    env = agent_env(
        f"http://127.0.0.1:{dead_port}",
        AGENTVM_GATEWAY_PORT=str(dead_port),
        AGENTVM_GATEWAY_SOCKET=str(path),
    )
    fake_anthropic.script(Turn.text("over the socket"), Turn.text("again"))
    client = RecordingClient()
    try:
        async with local_agent(client, env, stderr_path=tmp_path / "agent.err") as conn:
            session = await conn.new_session(cwd=str(repo))
            for text in ("a", "b"):
                result = await conn.prompt(
                    session_id=session.session_id, prompt=[acp.text_block(text)]
                )
                assert result.stop_reason == "end_turn"
    finally:
        server.close()
    assert len(fake_anthropic.requests) == 2
    assert connections == 1  # one kept-alive connection for both turns


async def test_a_dead_gateway_socket_falls_back_to_the_loopback_url(
    repo: Path, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    """The socket left behind by a host that died refuses connections: the agent's
    retry goes through the loopback URL (the forwarder that waits for the host)."""
    port = int(fake_anthropic.url.rsplit(":", 1)[1])
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays; connecting to it is refused
    env = agent_env(
        fake_anthropic.url, AGENTVM_GATEWAY_PORT=str(port), AGENTVM_GATEWAY_SOCKET=str(path)
    )
    fake_anthropic.script(Turn.text("through loopback"))
    client = RecordingClient()
    async with local_agent(client, env, stderr_path=tmp_path / "agent.err") as conn:
        session = await conn.new_session(cwd=str(repo))
        result = await conn.prompt(session_id=session.session_id, prompt=[acp.text_block("x")])
    assert result.stop_reason == "end_turn"
    assert len(fake_anthropic.requests) == 1
