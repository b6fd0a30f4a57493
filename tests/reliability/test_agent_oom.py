"""The coding agent itself is OOM-killed in the middle of a prompt.

A vm with a 256 MiB memory limit; the fake model has the agent write a 160 MB text
file (a ``bash`` tool call — that child exits normally) and then ``read`` it: the
agent process loads the whole file (bytes, then str) and the cgroup's OOM killer
kills it, the biggest process, mid-turn. The prompt must end with a clear error
(``agent_exited``, exit 137) — not hang — and the vm must stay usable: ``exec``
answers and a new session completes a turn."""

from __future__ import annotations

import time

import pytest

from host.sessions import AgentExited  # noqa: F401  (the typed error the client rebuilds)
from orchestrator import AgentVMError, create_client
from tests.reliability.conftest import StartHost, report
from tests.support.fake_anthropic import FakeAnthropic, Turn

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(600)]

MEMORY_MB = 256
BIG = "/home/user/big.txt"


async def test_agent_oom_mid_prompt_is_a_clear_error_and_the_vm_lives_on(
    host: StartHost, fake_model: FakeAnthropic
) -> None:
    server = host()
    fake_model.script(
        Turn.tool("bash", {"command": f"yes aaaaaaaaaaaaaaa | head -c 160000000 > {BIG}"}),
        Turn.tool("read", {"path": BIG}),
        Turn.text("never reached: the agent was killed reading the file"),
        marker="oom-me",
    )
    fake_model.script(Turn.text("alive after the OOM"), marker="still-there")
    client = create_client(server.url)
    vm = client.vm.get_or_create("oom", input={"limits": {"memory_mb": MEMORY_MB}})
    sid = (await vm.create_session("coding-agent"))["session_id"]

    started = time.monotonic()
    with pytest.raises(AgentVMError) as info:
        await vm.send_prompt(sid, "oom-me: read the big file")
    prompt_s = time.monotonic() - started
    err = info.value
    assert err.code == "agent_exited", (err.code, err.message, err.metadata)
    assert err.metadata.get("exit_code") == 128 + 9, err.metadata
    assert err.http_status < 500 or err.message, err  # a message, never a bare 500

    # The kernel's OOM killer did it (cgroup v1 counts kills in memory.oom_control).
    oom = await vm.exec(
        ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null || true"]
    )
    kills = [int(line.split()[1]) for line in oom["stdout"].splitlines() if "oom_kill " in line]
    if kills:
        assert kills[0] >= 1, oom["stdout"]

    # The vm is usable: exec answers, the sessions list says what happened, and a
    # new session completes a turn.
    echo = await vm.exec(["sh", "-c", f"rm -f {BIG}; echo ok"])
    assert echo["exit_code"] == 0 and echo["stdout"] == "ok\n", echo
    rows = {r["session_id"]: r for r in await vm.list_sessions()}
    assert rows[sid]["status"] == "exited", rows
    await vm.close_session(sid)
    fresh = (await vm.create_session("coding-agent"))["session_id"]
    answer = await vm.send_prompt(fresh, "still-there?")
    assert answer["stop_reason"] == "end_turn"
    assert "alive after the OOM" in answer["text"]
    await vm.close_session(fresh)
    report(
        "agent_oom",
        memory_mb=MEMORY_MB,
        prompt_to_error_s=round(prompt_s, 2),
        error_code=err.code,
        exit_code=err.metadata.get("exit_code"),
        cgroup_oom_kills=kills[0] if kills else None,
    )
