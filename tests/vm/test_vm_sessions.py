"""Agent sessions through the vm actor: real Docker, a real engine (SQLite), the
bundled coding agent, the host's LLM gateway; the fake model is the only fake."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from host.gateway import LLMGateway
from host.sandbox import SandboxLimits
from host.sessions import AgentError, AgentExited, SessionClosed
from host.vm import SandboxManager, VmOptions, vm_actor
from orchestrator import Client, Engine, setup
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn, tool_use
from vm_images.builder import ensure_image

from .conftest import HOST_ID

pytestmark = pytest.mark.docker

HOST_KEY = "sk-ant-vm-sessions-host-key-0c1d"
BUNDLES = ["common", "coding-agent"]
LIMITS = SandboxLimits(memory_mb=1024, cpus=1.0, pids=256, tmp_mb=64)
BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\nassert add(2, 3) == 5, add(2, 3)\nprint('tests pass')\n"


@pytest.fixture(scope="module")
def agent_image(docker_client: docker.DockerClient) -> str:
    return ensure_image(BUNDLES, client=docker_client)


@dataclass
class Host:
    manager: SandboxManager
    engine: Engine
    gateway: LLMGateway

    @property
    def client(self) -> Client:
        return self.engine.client()


HostFactory = Callable[[], Any]


@pytest.fixture
def session_host(
    make_engine: Callable[..., Any], agent_image: str, fake_anthropic: FakeAnthropic
) -> HostFactory:
    """``async with session_host() as h:`` — gateway + sandbox manager + engine with
    the vm actor on the test's database (a second one in a test is a host restart)."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[Host]:
        gateway = LLMGateway(api_key=HOST_KEY, upstream=fake_anthropic.url)
        defaults = VmOptions(bundles=BUNDLES, limits=LIMITS)
        manager = await SandboxManager.open(
            host_id=HOST_ID, pool_size=0, defaults=defaults, reap_interval=None, gateway=gateway
        )
        try:
            async with make_engine(setup(use={"vm": vm_actor(manager)})) as engine:
                manager.attach(engine)
                yield Host(manager, engine, gateway)
        finally:
            await manager.close()
            await gateway.close()

    return factory


def repo_tar(root: Path) -> bytes:
    """A git repository whose test fails (``add`` subtracts), as a tar archive."""
    repo = root / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text(BUGGY)
    (repo / "test_calc.py").write_text(TEST)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "calc"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(repo, arcname=".")
    return buf.getvalue()


async def events_of(vm: Any, sid: str, since: int = 0) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await vm.get_session_events(sid, since=since)
    return result


def updates(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        e["data"] for e in events if e["kind"] == "update" and e["data"]["sessionUpdate"] == kind
    ]


async def wait_event(vm: Any, sid: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    events = await eventually(
        lambda: events_of(vm, sid), lambda evs: any(pred(e) for e in evs), timeout=60
    )
    return next(e for e in events if pred(e))


async def test_a_session_fixes_a_real_bug(
    session_host: HostFactory, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.script(
        Turn.tool("read", {"path": "calc.py"}),
        Turn.tool("edit", {"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}),
        Turn.tool("bash", {"command": "python3 test_calc.py && git diff"}),
        Turn.text("Fixed", " the bug."),
        marker="[fix]",
    )
    look = tool_use("read", {"path": "calc.py"})
    fake_anthropic.script(Turn([look]), Turn.text("It adds."), marker="[look]")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "fix"])
        await vm.upload_dir("calc", repo_tar(tmp_path))
        assert (await vm.exec("python3 test_calc.py", cwd="calc"))["exit_code"] != 0
        sub = await vm.connect(["session_event"])
        try:
            info = await vm.create_session(
                "coding-agent",
                env={"ANTHROPIC_API_KEY": HOST_KEY},  # as the seeds do
                cwd="calc",
                model="claude-test",
                additional_instructions="Be brief.",
            )
            sid = info["session_id"]
            assert info["agent_type"] == "coding-agent"
            assert info["agent_info"]["name"] == "agentvm-coding-agent"
            [row] = await vm.list_sessions()
            assert row["session_id"] == sid and row["status"] == "ready"
            assert row["cwd"] == "/home/user/calc"

            result = await vm.send_prompt(sid, "[fix] make the tests pass")
            assert result["stop_reason"] == "end_turn"
            assert result["text"].endswith("Fixed the bug.")
            assert await vm.read_file("calc/calc.py") == BUGGY.replace("-", "+").encode()
            assert (await vm.exec("python3 test_calc.py", cwd="calc"))["exit_code"] == 0

            events = await events_of(vm, sid)
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert events[0]["kind"] == "prompt" and events[-1]["kind"] == "prompt_end"
            assert events[-1]["data"]["stop_reason"] == "end_turn"
            calls = updates(events, "tool_call")
            assert [c["kind"] for c in calls] == ["read", "edit", "execute"]
            done = {
                u["toolCallId"]: u
                for u in updates(events, "tool_call_update")
                if u.get("status") == "completed"
            }
            assert set(done) == {c["toolCallId"] for c in calls}
            diffs = [
                c for u in done.values() for c in u.get("content") or [] if c["type"] == "diff"
            ]
            assert diffs and diffs[0]["oldText"] == BUGGY and "a + b" in diffs[0]["newText"]
            bash = done[calls[2]["toolCallId"]]["rawOutput"]["output"]
            assert "tests pass" in bash and "+    return a + b" in bash  # the git diff
            assert since_works(await events_of(vm, sid, since=3), events[3:])

            # Every stored event was broadcast, in order.
            got: list[dict[str, Any]] = []
            while len(got) < len(events):
                got.append((await sub.next(20)).payload)
            assert [(e["seq"], e["kind"]) for e in got] == [(e["seq"], e["kind"]) for e in events]

            # Through the gateway with the host's key, booked to the session.
            requests = fake_anthropic.message_requests()
            assert len(requests) == 4 and {r.api_key for r in requests} == {HOST_KEY}
            assert {r.body["model"] for r in requests} == {"claude-test"}
            assert "Be brief." in requests[0].body["system"]
            usage = await vm.llm_usage()
            assert usage["sessions"][sid]["input_tokens"] == 400
            assert usage["sessions"][sid]["output_tokens"] == 80
            assert usage["total"]["total_tokens"] == 480

            # A second session in the same vm sees the first one's files.
            second = (await vm.create_session("coding-agent", cwd="calc"))["session_id"]
            assert (await vm.send_prompt(second, "[look] what does add do?"))[
                "stop_reason"
            ] == "end_turn"
            seen = fake_anthropic.message_requests()[-1].tool_results()[look.id]["content"]
            assert "return a + b" in seen
            assert {r["session_id"] for r in await vm.list_sessions()} == {sid, second}
            usage = await vm.llm_usage()
            assert usage["sessions"][second]["total_tokens"] == 240
            assert usage["total"]["total_tokens"] == 720

            await vm.close_session(sid)
            await vm.close_session(second)
            assert (await events_of(vm, sid))[-1]["kind"] == "session_closed"
            # The events stay readable after the session closed.
            assert len(await events_of(vm, sid)) == len(events) + 1
        finally:
            await sub.close()
        await vm.destroy()


def since_works(later: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    return [e["seq"] for e in later] == [e["seq"] for e in expected]


async def test_cancel_mid_turn_then_close(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    gate = fake_anthropic.gate()
    fake_anthropic.script(
        Turn.text("thinking about it", " at length", wait_for=gate),
        Turn.text("Still here."),
        marker="[slow]",
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "cancel"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        prompt = asyncio.create_task(vm.send_prompt(sid, "[slow] go"))
        await wait_event(vm, sid, lambda e: e["kind"] == "update" and "thinking" in str(e["data"]))
        assert not prompt.done()
        await vm.cancel_prompt(sid)
        result = await asyncio.wait_for(prompt, 30)
        assert result["stop_reason"] == "cancelled"
        gate.set()
        # The conversation stays usable.
        again = await vm.send_prompt(sid, "[slow] are you there?")
        assert again == {**again, "stop_reason": "end_turn", "text": "Still here."}

        await vm.close_session(sid)
        await vm.close_session(sid)  # idempotent
        with pytest.raises(SessionClosed):
            await vm.send_prompt(sid, "[slow] hello?")
        [row] = await vm.list_sessions()
        assert row["status"] == "closed"
        kinds = [e["kind"] for e in await events_of(vm, sid)]
        assert kinds.count("prompt_end") == 2 and kinds[-1] == "session_closed"
        await vm.destroy()


async def test_permission_ask_blocks_until_answered(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        Turn.tool("bash", {"command": "echo approved > out.txt"}),
        Turn.text("Wrote it."),
        marker="[ask]",
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "ask"])
        sid = (await vm.create_session("coding-agent", permission_policy="ask"))["session_id"]
        prompt = asyncio.create_task(vm.send_prompt(sid, "[ask] write the file"))
        request = await wait_event(vm, sid, lambda e: e["kind"] == "permission_request")
        permission_id = request["data"]["permission_id"]
        assert request["data"]["tool_call"]["kind"] == "execute"
        [row] = await vm.list_sessions()
        assert row["pending_permissions"] == [permission_id]
        assert not prompt.done() and not await vm.exists("out.txt")

        await vm.respond_permission(sid, permission_id, "once")
        result = await asyncio.wait_for(prompt, 30)
        assert result["stop_reason"] == "end_turn"
        assert await vm.read_file("out.txt") == b"approved\n"
        responses = [
            e["data"] for e in await events_of(vm, sid) if e["kind"] == "permission_response"
        ]
        assert responses == [
            {
                "permission_id": permission_id,
                "reply": "once",
                "option_id": "allow_once",
                "auto": False,
            }
        ]
        await vm.close_session(sid)
        await vm.destroy()


async def test_agent_crash_is_reported(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "crash"])
        # A custom env starts a process of its own; with logging, stderr has lines.
        sid = (await vm.create_session("coding-agent", env={"AGENTVM_AGENT_LOG": "info"}))[
            "session_id"
        ]
        [row] = await vm.list_sessions()
        await vm.kill_process(row["pid"], signal="KILL")
        exit_event = await wait_event(vm, sid, lambda e: e["kind"] == "agent_exit")
        assert exit_event["data"]["exit_code"] == 128 + 9
        assert "new session" in exit_event["data"]["stderr_tail"]
        with pytest.raises(AgentExited) as info:
            await vm.send_prompt(sid, "hello?")
        assert info.value.code == "agent_exited"
        assert info.value.metadata["exit_code"] == 128 + 9
        assert "new session" in info.value.metadata["stderr_tail"]
        [row] = await vm.list_sessions()
        assert row["status"] == "exited"
        await vm.close_session(sid)
        await vm.destroy()


async def test_a_cancelled_send_prompt_cancels_the_agents_turn(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    """The caller of send_prompt is cancelled (as a run cancel does to its step): the
    agent gets session/cancel, its turn ends ``cancelled`` (the model call abandoned)
    and the session takes the next prompt."""
    gate = fake_anthropic.gate()
    fake_anthropic.script(
        Turn.text("working on it", " slowly", wait_for=gate),
        Turn.text("Next one."),
        marker="[caller-cancel]",
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "caller-cancel"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        prompt = asyncio.create_task(vm.send_prompt(sid, "[caller-cancel] go"))
        await wait_event(vm, sid, lambda e: "working on it" in str(e["data"]))
        prompt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await prompt
        events = await eventually(
            lambda: events_of(vm, sid),
            lambda evs: evs[-1]["kind"] == "prompt_end",
            timeout=30,
            what="the cancelled turn's prompt_end",
        )
        assert events[-1]["data"]["stop_reason"] == "cancelled"
        gate.set()
        again = await vm.send_prompt(sid, "[caller-cancel] next")
        assert again == {**again, "stop_reason": "end_turn", "text": "Next one."}
        await vm.destroy()


async def test_a_failed_prompt_ends_with_a_prompt_end_carrying_the_error(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(
        Turn.fail(400, "invalid_request_error", "prompt is too long"), marker="[fails]"
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "fails"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        with pytest.raises(AgentError):
            await vm.send_prompt(sid, "[fails] go")
        events = await events_of(vm, sid)
        assert events[-1]["kind"] == "prompt_end", events
        end = events[-1]["data"]
        assert end["stop_reason"] == "error" and "prompt is too long" in str(end["error"])
        await vm.destroy()


async def test_host_restart_during_a_prompt_loses_no_event(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    # The agent is inside a tool call (waiting for a file) while the host restarts.
    wait = "while [ ! -f /home/user/go ]; do sleep 0.05; done; echo released"
    fake_anthropic.script(
        Turn.tool("bash", {"command": wait}, say="Waiting."),
        Turn.text("Done", " after the restart."),
        marker="[restart]",
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "restart"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        prompt = asyncio.create_task(vm.send_prompt(sid, "[restart] wait for go"))
        await wait_event(
            vm,
            sid,
            lambda e: e["kind"] == "update" and e["data"].get("status") == "in_progress",
        )
        before = await events_of(vm, sid)
    # The engine stopped (the vm slept with engine_stopping): the call in flight ended.
    with pytest.raises(BaseException):  # noqa: B017 (EngineStopped or cancelled)
        await prompt
    async with session_host() as h2:
        vm = h2.client.vm.get_or_create(["sess", "restart"])
        [row] = await vm.list_sessions()  # wakes the vm: re-attached
        assert row["session_id"] == sid and row["status"] in ("ready", "prompting")
        await vm.write_file("go", "")
        events = await eventually(
            lambda: events_of(vm, sid),
            lambda evs: evs[-1]["kind"] == "prompt_end",
            timeout=60,
            what="the prompt to end after the restart",
        )
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[: len(before)] == before
        assert events[-1]["data"]["stop_reason"] == "end_turn"
        [bash] = [u for u in updates(events, "tool_call_update") if u.get("status") == "completed"]
        assert "released" in bash["rawOutput"]["output"]
        chunks = "".join(u["content"]["text"] for u in updates(events, "agent_message_chunk"))
        assert chunks == "Waiting.Done after the restart."
        # The session goes on normally on the new host.
        fake_anthropic.script(Turn.text("Yes."), marker="[after]")
        result = await vm.send_prompt(sid, "[after] still there?")
        assert result == {**result, "stop_reason": "end_turn", "text": "Yes."}
        await vm.close_session(sid)
        await vm.destroy()


# The refused prompt fails only after the coding agent's retries of the gateway's 429
# (about 15 s of backoff): slow. The 429 itself is tests/sessions/test_gateway.py's
# test_budget_exhausted_is_a_clear_429, in the default suite.
@pytest.mark.parametrize("refused", [pytest.param(True, marks=pytest.mark.slow), False])
async def test_token_budget(
    session_host: HostFactory, fake_anthropic: FakeAnthropic, refused: bool
) -> None:
    fake_anthropic.script(Turn.text("one"), Turn.text("two"), marker="[budget]")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "budget"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        await vm.set_token_budget(100)  # the first call (120 tokens) crosses it
        assert (await vm.send_prompt(sid, "[budget] first"))["stop_reason"] == "end_turn"
        usage = await vm.llm_usage()
        assert usage["budget_tokens"] == 100 and usage["remaining_tokens"] == 0
        if refused:
            with pytest.raises(AgentError) as info:
                await vm.send_prompt(sid, "[budget] second")
            assert "token budget exhausted" in info.value.message
            assert len(fake_anthropic.message_requests()) == 1  # refused at the gateway
        await vm.set_token_budget(None)
        assert (await vm.send_prompt(sid, "[budget] third"))["text"] == "two"
        await vm.close_session(sid)
        await vm.destroy()


async def test_an_idle_session_is_closed_and_lets_the_vm_sleep(
    session_host: HostFactory, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session nobody prompts (e.g. one whose workflow step crashed and re-ran)
    is closed after the session idle timeout, so it stops holding its vm awake."""
    monkeypatch.setenv("AGENTVM_SESSION_IDLE_TIMEOUT", "0.5")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["sess", "idle"])
        sid = (await vm.create_session("coding-agent"))["session_id"]
        closed = await wait_event(vm, sid, lambda e: e["kind"] in ("session_closed", "agent_exit"))
        assert closed["kind"] == "session_closed"
        assert await vm.list_sessions() == [] or all(
            row["status"] in ("closed", "exited") for row in await vm.list_sessions()
        )
        assert (await vm.fetch_state())["sessions"] == {}
        await vm.destroy()
