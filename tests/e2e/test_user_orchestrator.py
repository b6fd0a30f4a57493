"""A user-defined orchestrator (examples/changelog_writer.py) next to the built-ins,
in-process on the real host runtime (Docker, gateway, coding agent, fake model);
plus the issueWorker's webhook-style ingest action and the sandbox metric."""

from __future__ import annotations

import pytest

from examples.changelog_writer import changelog_writer
from host.app import HostSettings, build_registry, host_runtime
from orchestrator import EngineConfig, Registry
from orchestrator.builtin import RepoPolicy
from tests.support import eventually
from tests.support.fake_anthropic import Turn

pytestmark = pytest.mark.docker


@pytest.fixture
def runtime(tmp_path, host_id, fake_model, e2e_images, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_model.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-user-orchestrator-test")

    def registry(manager):
        # In-process sends carry host paths: allowed under this test's directory only.
        writer = changelog_writer(RepoPolicy(roots=[str(tmp_path)]))
        return Registry({**build_registry(manager).actors, "changelog": writer})

    return host_runtime(
        EngineConfig(db=str(tmp_path / "host.db")),
        HostSettings(host_id=host_id, warm_pool=0),
        registry=registry,
    )


async def test_user_defined_orchestrator_runs_beside_the_builtins(runtime, fake_model, buggy_repo):
    fake_model.script(
        Turn.tool("write", {"path": "/home/user/repo/CHANGES.md", "content": "- calc: first\n"}),
        Turn.text("Changelog written."),
        marker="Write a short changelog",
    )
    async with runtime as engine:
        client = engine.client()
        result = await client.changelog.get_or_create("main").send(
            "summarize", {"repo": str(buggy_repo)}, wait=True, timeout=240
        )
        assert result.status == "completed", result
        assert result.response == {"changes": "- calc: first\n"}
        # The agent saw the repository's real history in its prompt.
        prompt = str(fake_model.message_requests()[0].body["messages"])
        assert "calc" in prompt
        assert await client.changelog.get("main").changelogs() == {
            str(buggy_repo): "- calc: first\n"
        }


async def test_issue_worker_ingests_through_an_action(runtime, fake_model):
    fake_model.script(Turn.text("Investigated."), marker="Login redirect broken")
    async with runtime as engine:
        worker = engine.client().issueWorker.get_or_create("main")
        message_id = await worker.ingest_issue(
            "Login redirect broken", "Users land on /undefined after login"
        )
        assert isinstance(message_id, int)
        handled = await eventually(
            worker.get_handled, lambda h: len(h) == 1, timeout=240, interval=0.2, what="issue"
        )
        assert handled == [{"title": "Login redirect broken", "stop_reason": "end_turn"}]
        from orchestrator.metrics import REGISTRY

        assert 'agentvm_sandboxes_running{kind="vm"} 1' in REGISTRY.render()
