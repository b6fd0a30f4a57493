"""Agent tasks (orchestrator/dag/agent.py): ``run_agent`` in a real vm with the coding
agent and the fake model, and ``ctx.parallel`` / ``ctx.race`` of agent tasks in a
user orchestrator served next to the vm actor (real Docker, real SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from host.app import HostSettings, build_registry, host_runtime
from orchestrator import EngineConfig, Registry
from orchestrator.dag.agent import AgentTask, AgentTaskFailed, run_agent
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic, Turn

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def images() -> None:
    """The vm image (common + coding-agent) built before any test's deadline runs."""
    client = docker_client()
    from vm_images.builder import ensure_image

    ensure_image(["common", "coding-agent"], client=client)
    client.close()


@pytest.fixture
def host_id() -> Iterator[str]:
    hid = f"dag-{uuid.uuid4().hex[:8]}"
    yield hid
    client = docker.from_env()
    remove_host(client, hid)
    client.close()


@pytest.fixture
def fake_model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


def _runtime(tmp_path: Path, host_id: str, extra: dict[str, Any] | None = None) -> Any:
    def registry(manager: Any) -> Registry:
        return Registry({**build_registry(manager).actors, **(extra or {})})

    return host_runtime(
        EngineConfig(db=str(tmp_path / "host.db")),
        HostSettings(host_id=host_id, warm_pool=0),
        registry=registry,
    )


@pytest.fixture
def model_env(fake_model: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> FakeAnthropic:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_model.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agent-tasks-test")
    return fake_model


def _never() -> bool:
    return False


async def test_run_agent_returns_text_tool_calls_and_usage(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    model_env.script(
        Turn.tool("write", {"path": "/home/user/out.txt", "content": "42\n"}),
        Turn.text("Wrote ", "the answer."),
        marker="write-the-answer",
    )
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        await client.vm.create("one")
        task = AgentTask(prompt="write-the-answer", check="grep -qx 42 /home/user/out.txt")
        result = await run_agent(client, "one", task, stopping=_never)
        assert result["status"] == "completed"
        assert result["text"] == "Wrote the answer."
        assert result["stop_reason"] == "end_turn"
        assert result["check"] == {"exit_code": 0, "output": ""}
        assert result["vm"] == "one"
        [call] = result["tool_calls"]
        assert call["status"] == "completed"
        assert call["input"]["path"] == "/home/user/out.txt"
        assert result["usage"]["outputTokens"] == 40  # two model calls of 20
        # The session was closed.
        assert [
            s for s in await client.vm.get("one").list_sessions() if s["status"] != "closed"
        ] == []


async def test_run_agent_fails_on_a_failed_check_and_on_a_model_error(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    model_env.script(Turn.text("I did nothing."), marker="do-nothing")
    model_env.script(Turn.fail(500, "api_error", "the model broke"), marker="model-breaks")
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        await client.vm.create("one")
        task = AgentTask(prompt="do-nothing", check="echo missing >&2; test -f /home/user/nope")
        with pytest.raises(AgentTaskFailed) as info:
            await run_agent(client, "one", task, stopping=_never)
        meta = info.value.metadata
        assert info.value.code == "step_failed" and info.value.group == "workflow"
        assert meta["stop_reason"] == "end_turn"
        assert meta["check_exit_code"] == 1
        assert "missing" in meta["check_output"]

        with pytest.raises(AgentTaskFailed) as info:
            await run_agent(client, "one", AgentTask(prompt="model-breaks"), stopping=_never)
        assert info.value.metadata["stop_reason"] != "end_turn"
        assert info.value.metadata["check_exit_code"] is None
