"""Sessions with an ACP agent (tests/sessions/echo_agent.py) in a real sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from host.gateway import LLMGateway
from host.sandbox import DockerBackend, Sandbox
from host.sessions import (
    AgentCommand,
    AgentExited,
    MemoryEventStore,
    SessionClosed,
    SessionEvent,
    SessionManager,
    SessionNotFound,
    UnknownAgentType,
)
from tests.support import eventually as _eventually

pytestmark = pytest.mark.docker
T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, deadline: float = 20.0, what: str = "condition"
) -> T:
    """The shared poll (tests.support.eventually) with this suite's defaults."""
    return await _eventually(check, timeout=deadline, interval=0.05, what=what)


def updates(events: list[SessionEvent], kind: str = "agent_message_chunk") -> list[dict[str, Any]]:
    return [e.data for e in events if e.kind == "update" and e.data.get("sessionUpdate") == kind]


async def test_lifecycle(sessions: SessionManager) -> None:
    info = await sessions.create_session("echo", cwd="work")
    assert info.agent_type == "echo"
    assert info.agent_info == {"name": "echo-agent", "version": "1.0"}
    assert "loadSession" in info.capabilities
    result = await sessions.send_prompt(info.session_id, "echo hello world")
    assert result.stop_reason == "end_turn"
    assert result.text == "hello world"
    events = await sessions.get_session_events(info.session_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events] == ["prompt", "update", "update", "prompt_end"]
    assert "".join(u["content"]["text"] for u in updates(events)) == "hello world"
    later = await sessions.get_session_events(info.session_id, since=2)
    assert [e.seq for e in later] == [3, 4]
    (row,) = await sessions.list_sessions()
    assert row.status == "ready" and row.cwd == "/home/user/work"
    await sessions.close_session(info.session_id)
    assert (await sessions.list_sessions())[0].status == "closed"
    with pytest.raises(SessionClosed) as err:
        await sessions.send_prompt(info.session_id, "echo again")
    assert err.value.http_status == 409
    await sessions.close_session(info.session_id)  # idempotent
    running = [p for p in await sessions.sandbox.list_processes() if p.running]
    assert all(p.pid != row.pid for p in running)


async def test_unknown_things_are_typed_errors(sessions: SessionManager) -> None:
    with pytest.raises(UnknownAgentType) as err:
        await sessions.create_session("no-such-agent")
    assert err.value.http_status == 400 and "echo" in err.value.message
    with pytest.raises(SessionNotFound):
        await sessions.send_prompt("s-nope", "hi")


async def test_fs_and_terminal_requests_are_answered_inside_the_sandbox(
    sessions: SessionManager, sandbox: Sandbox
) -> None:
    await sandbox.write_file("notes/a.txt", "line one\nline two\n", parents=True)
    sid = (await sessions.create_session("echo")).session_id
    assert (await sessions.send_prompt(sid, "read /home/user/notes/a.txt")).text == (
        "line one\nline two\n"
    )
    assert (await sessions.send_prompt(sid, "write /home/user/out/b.txt written")).text == "ok"
    assert await sandbox.read_file("out/b.txt") == b"written"
    result = await sessions.send_prompt(sid, "run echo from-$(hostname) && id -un")
    assert result.text == "0:from-sandbox\nuser\n"
    result = await sessions.send_prompt(sid, "run exit 4")
    assert result.text.startswith("4:")


async def test_permission_ask_blocks_until_answered(sessions: SessionManager) -> None:
    sid = (await sessions.create_session("echo", permission_policy="ask")).session_id

    async def asks() -> list[SessionEvent]:
        events = await sessions.get_session_events(sid)
        return [e for e in events if e.kind == "permission_request"]

    for reply, expected in (("once", "yes"), ("reject", "no"), ("always", "yes-all")):
        prompt = asyncio.create_task(sessions.send_prompt(sid, "ask"))
        seen = len(await asks())

        async def fresh(seen: int = seen) -> SessionEvent | None:
            found = await asks()
            return found[-1] if len(found) > seen else None

        ask = await eventually(fresh, what="permission_request")
        assert ask.data["tool_call"]["toolCallId"] == "t1"
        assert [o["optionId"] for o in ask.data["options"]] == ["yes", "yes-all", "no"]
        assert not prompt.done()
        assert (await sessions.list_sessions())[0].pending_permissions == [
            ask.data["permission_id"]
        ]
        await sessions.respond_permission(sid, ask.data["permission_id"], reply)  # type: ignore[arg-type]
        assert (await prompt).text == expected
    # After "always" the same kind of tool call is approved without asking.
    before = len(await asks())
    assert (await sessions.send_prompt(sid, "ask")).text == "yes"
    assert len(await asks()) == before


async def test_permission_allow_is_automatic(sessions: SessionManager) -> None:
    sid = (await sessions.create_session("echo")).session_id
    assert (await sessions.send_prompt(sid, "ask")).text == "yes"
    events = await sessions.get_session_events(sid)
    assert not [e for e in events if e.kind == "permission_request"]
    (resp,) = [e for e in events if e.kind == "permission_response"]
    assert resp.data["auto"] is True and resp.data["option_id"] == "yes"


async def test_cancel_prompt(sessions: SessionManager) -> None:
    sid = (await sessions.create_session("echo")).session_id
    prompt = asyncio.create_task(sessions.send_prompt(sid, "wait"))

    async def waiting() -> bool:
        return any(u["content"]["text"] == "waiting" for u in updates(
            await sessions.get_session_events(sid)))  # fmt: skip

    await eventually(waiting, what="the agent to start waiting")
    await sessions.cancel_prompt(sid)
    result = await prompt
    assert result.stop_reason == "cancelled" and result.text == "waiting"
    assert (await sessions.send_prompt(sid, "echo still usable")).text == "still usable"


async def test_agent_death_gives_agent_exit_and_typed_errors(sessions: SessionManager) -> None:
    sid = (await sessions.create_session("echo")).session_id
    with pytest.raises(AgentExited) as err:
        await sessions.send_prompt(sid, "crash")
    assert err.value.metadata["exit_code"] == 3
    assert "the crash command was given" in err.value.metadata["stderr_tail"]
    events = await sessions.get_session_events(sid)
    (exit_event,) = [e for e in events if e.kind == "agent_exit"]
    assert exit_event.data["exit_code"] == 3
    assert "the crash command was given" in exit_event.data["stderr_tail"]
    with pytest.raises(AgentExited) as again:
        await sessions.send_prompt(sid, "echo hi")
    assert again.value.http_status == 502 and "stderr tail" in again.value.message
    assert (await sessions.list_sessions())[0].status == "exited"


async def test_agent_killed_from_outside(sessions: SessionManager, sandbox: Sandbox) -> None:
    sid = (await sessions.create_session("echo")).session_id
    await sandbox.kill_process(sessions.record(sid).pid)

    async def exited() -> bool:
        return any(e.kind == "agent_exit" for e in await sessions.get_session_events(sid))

    await eventually(exited, what="agent_exit")
    with pytest.raises(AgentExited):
        await sessions.send_prompt(sid, "echo hi")


async def test_two_sessions_share_the_sandbox_files(sessions: SessionManager) -> None:
    one = (await sessions.create_session("echo")).session_id
    two = (await sessions.create_session("echo")).session_id
    await sessions.send_prompt(one, "write shared.txt from-one")
    await sessions.close_session(one)
    assert (await sessions.send_prompt(two, "read shared.txt")).text == "from-one"


async def test_reattach_after_a_host_restart_loses_no_update(
    sessions: SessionManager,
    sandbox: Sandbox,
    store: MemoryEventStore,
    host_key: str,
    agents: dict[str, AgentCommand],
) -> None:
    """The host goes away mid-prompt; the agent keeps writing; a new host process
    (new sandbox handle, new manager, same store) re-attaches and every update is
    stored exactly once, in order."""
    sid = (await sessions.create_session("echo")).session_id
    record = sessions.record(sid)
    n = 100
    prompt = asyncio.create_task(sessions.send_prompt(sid, f"count {n}"))

    async def some() -> bool:
        return len(updates(await store.read(sid))) >= 10

    await eventually(some, what="the first updates")
    # The host process dies: its manager and its listening socket go away (the
    # agent's turn goes on, as when the engine stops).
    sessions.keep_turn_on_cancel = lambda: True
    prompt.cancel()
    await sessions.close()
    await sandbox.control.close()
    stored_then = len(updates(await store.read(sid)))
    assert stored_then < n
    # A new host process adopts the sandbox and re-attaches the session.
    backend = await DockerBackend.connect(sandbox.backend.host_id)  # type: ignore[attr-defined]
    restarted = await backend.get(sandbox.name)
    try:
        manager = SessionManager(restarted, store=store, agents=agents, host_api_key=host_key)
        row = await manager.reattach(record)
        assert row.status == "prompting"  # the prompt of the earlier host runs on

        async def finished() -> bool:
            return any(e.kind == "prompt_end" for e in await store.read(sid))

        await eventually(finished, what="the prompt to end after the re-attach")
        texts = [u["content"]["text"] for u in updates(await store.read(sid))]
        assert texts == [f"{i} " for i in range(n)]
        events = await store.read(sid)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        # And the session is usable from the new host.
        assert (await manager.send_prompt(sid, "echo after restart")).text == "after restart"
        await manager.close_session(sid)
        await manager.close()
    finally:
        await backend.close()


async def test_supervisor_link_drop_is_survived_mid_prompt(
    sessions: SessionManager, sandbox: Sandbox, store: MemoryEventStore
) -> None:
    """The supervisor link breaks during a prompt (same host process): the session
    re-attaches by itself and the prompt completes with every update."""
    sid = (await sessions.create_session("echo")).session_id
    prompt = asyncio.create_task(sessions.send_prompt(sid, "count 60"))

    async def some() -> bool:
        return len(updates(await store.read(sid))) >= 5

    await eventually(some, what="the first updates")
    conn = sandbox.control.live()
    assert conn is not None
    await conn.close("test: drop the link")
    result = await prompt
    assert result.stop_reason == "end_turn"
    assert result.text == "".join(f"{i} " for i in range(60))
    texts = [u["content"]["text"] for u in updates(await store.read(sid))]
    assert texts == [f"{i} " for i in range(60)]


async def test_key_never_enters_the_sandbox(
    sandbox: Sandbox,
    served: LLMGateway,
    upstream: Any,
    host_key: str,
    store: MemoryEventStore,
    agents: dict[str, AgentCommand],
) -> None:
    """Seeds pass the host key in env; it is replaced by the placeholder, the agent's
    model call still works through the gateway, and the key is nowhere in the sandbox."""
    manager = SessionManager(sandbox, store=store, agents=agents, host_api_key=host_key)
    try:
        sid = (await manager.create_session("echo", env={"ANTHROPIC_API_KEY": host_key})).session_id
        result = await manager.send_prompt(sid, "model")
        assert "message_start" in result.text and "hello" in result.text
        assert upstream.requests[-1].headers["x-api-key"] == host_key
        assert served.usage(sandbox.name).sessions[sid].requests == 1
        search = f"""
import os, sys
key = ({host_key[:8]!r} + {host_key[8:]!r}).encode()  # split: not in our own cmdline
hits, environs = [], 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    for name in ("environ", "cmdline"):
        try:
            data = open(f"/proc/{{pid}}/{{name}}", "rb").read()
        except OSError:
            continue
        environs += name == "environ"
        if key in data:
            hits.append(f"/proc/{{pid}}/{{name}}")
for root in ("/home/user", "/tmp"):
    for d, _, files in os.walk(root):
        for f in files:
            try:
                if key in open(os.path.join(d, f), "rb").read():
                    hits.append(os.path.join(d, f))
            except OSError:
                pass
print(environs, hits)
"""
        res = await sandbox.exec(["python3", "-c", search])
        environs, hits = res.stdout.split(" ", 1)
        assert int(environs) >= 2  # the agent's and the search's own environment were read
        assert hits.strip() == "[]", res.stdout
        # The agent saw the placeholder, not the key.
        pid = manager.record(sid).pid
        env = await sandbox.read_file(f"/proc/{pid}/environ")
        assert b"ANTHROPIC_API_KEY=agentvm-gateway" in env
        assert f"AGENTVM_SESSION_ID={sid}".encode() in env
    finally:
        await manager.close()
