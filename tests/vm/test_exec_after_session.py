"""Timed execs in a vm after its agent ran a terminal command (the reported bug).

Before the fix, once the coding agent had run its bash tool (and kept its gateway
connection alive), every ``exec`` with a ``timeout`` failed with ``SupervisorError:
Broken pipe`` or ran untracked. Root cause and the sandbox-level tests:
tests/sandbox/test_exec_tracking.py.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.fake_anthropic import FakeAnthropic, Turn

from .test_vm_sessions import HOST_KEY, HostFactory, agent_image, session_host

__all__ = ["agent_image", "session_host"]

pytestmark = pytest.mark.docker

ROUNDS = 10


async def test_timed_execs_after_the_agent_ran_bash(
    session_host: HostFactory, fake_anthropic: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentvm.sandbox")
    fake_anthropic.script(
        Turn.tool("bash", {"command": "echo hi; sleep 0.2 & echo bg"}),
        Turn.text("Done."),
    )
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["x1", "exec-after-session"])
        info = await vm.create_session(
            "coding-agent", env={"ANTHROPIC_API_KEY": HOST_KEY}, model="claude-test"
        )
        result = await vm.send_prompt(info["session_id"], "run it")
        assert result["stop_reason"] == "end_turn"
        for i in range(ROUNDS):
            res = await vm.exec(f"echo run {i}; grep pids /proc/self/cgroup", {"timeout": 60})
            assert res["exit_code"] == 0, res
            assert res["stdout"].startswith(f"run {i}\n"), res
            assert "agentvm-exec-" in res["stdout"], res  # in its own cgroup
    assert not [r for r in caplog.records if "untracked" in r.getMessage()]
