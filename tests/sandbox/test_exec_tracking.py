"""Timed execs run in their own cgroup, however many fds the supervisor holds.

Regression: the start gate was a pipe whose fd *number* the wrapper shell (dash) had to
name in a redirection (``<&$1``), and dash takes single-digit fds only. Once fds 0-9
of the supervisor were all in use (an agent session's keep-alive connections to the
gateway forwarder fill the low ones), every timed exec failed: the wrapper died with
"Bad fd number" before the host moved it ("exec runs untracked: no process N under
the supervisor") and opening the gate gave ``SupervisorError: Broken pipe``. The gate
is now the child's stdin, which has no number to spell.

The attacker here is sandbox code holding idle connections to the gateway forwarder
(what the agent's HTTP client does), so the supervisor keeps two fds for each.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import pytest

from host.gateway import GatewayLimits, LLMGateway
from host.sandbox import ProcessHandle, Sandbox
from tests.support import eventually

pytestmark = pytest.mark.docker

CONNECTIONS = 8
ROUNDS = 10
# Opens idle connections to the gateway forwarder and keeps them until killed.
HOLDER = """
import os, socket, sys, time
port = int(os.environ["ANTHROPIC_BASE_URL"].rsplit(":", 1)[1])
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(int(sys.argv[1]))]
print("holding", flush=True)
time.sleep(1000)
"""


@pytest.fixture
async def gateway(sandbox: Sandbox) -> AsyncIterator[LLMGateway]:
    """The host's gateway served to the sandbox; idle connections stay open."""
    limits = GatewayLimits(header_timeout=600)
    gw = LLMGateway(api_key="sk-ant-unused", upstream="http://127.0.0.1:9", limits=limits)
    await gw.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    yield gw
    await gw.close()


def _low_fds_free(init_pid: int) -> list[int]:
    """The supervisor's unused fds below 10 (read from the host's /proc)."""
    used = {int(fd) for fd in os.listdir(f"/proc/{init_pid}/fd")}
    return [fd for fd in range(10) if fd not in used]


async def _fill_low_fds(sandbox: Sandbox) -> ProcessHandle:
    """Hold gateway connections until the supervisor has no free fd below 10."""
    holder = await sandbox.spawn(["python3", "-c", HOLDER, str(CONNECTIONS)])
    init_pid = await sandbox.backend.init_pid(sandbox)
    await eventually(
        lambda: asyncio.to_thread(_low_fds_free, init_pid),
        lambda free: not free,
        what="the supervisor's fds 0-9 to be in use",
    )
    return holder


async def _alive(sandbox: Sandbox, pidfile: str) -> bool:
    pid = (await sandbox.read_file(pidfile)).decode().strip()
    return (await sandbox.exec(["kill", "-0", pid])).exit_code == 0


async def test_timed_execs_are_tracked_with_the_low_fds_taken(
    sandbox: Sandbox, gateway: LLMGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentvm.sandbox")
    holder = await _fill_low_fds(sandbox)
    for i in range(ROUNDS):
        result = await sandbox.exec(f"echo run {i}; cat /proc/self/cgroup", timeout=60)
        assert result.exit_code == 0, result
        lines = result.stdout.splitlines()
        assert lines[0] == f"run {i}"
        # It ran inside its own exec cgroup, not untracked.
        assert any("agentvm-exec-" in line for line in lines[1:]), result.stdout
    assert not [r for r in caplog.records if "untracked" in r.getMessage()]
    await holder.kill()


async def test_concurrent_timed_execs_each_get_a_cgroup(
    sandbox: Sandbox, gateway: LLMGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentvm.sandbox")
    holder = await _fill_low_fds(sandbox)

    async def cgroup(i: int) -> str:
        result = await sandbox.exec("grep pids /proc/self/cgroup", timeout=60)
        assert result.exit_code == 0, result
        return result.stdout.strip()

    # The first execs of a sandbox race to make its tracker: names must not clash.
    paths = await asyncio.gather(*(cgroup(i) for i in range(4)))
    assert all("agentvm-exec-" in p for p in paths) and len(set(paths)) == 4, paths
    assert not [r for r in caplog.records if "untracked" in r.getMessage()]
    await holder.kill()


async def test_timeout_kills_escaped_children_with_the_low_fds_taken(
    sandbox: Sandbox, gateway: LLMGateway
) -> None:
    # A timed exec whose child leaves the session and process group dies whole.
    holder = await _fill_low_fds(sandbox)
    escaper = "setsid bash -c 'echo $$ > /tmp/esc.pid; exec sleep 1000' & sleep 1000"
    result = await sandbox.exec(escaper, timeout=1)
    assert result.timed_out
    await eventually(lambda: _alive(sandbox, "/tmp/esc.pid"), lambda v: not v)
    await holder.kill()


async def test_timed_exec_stdin_and_descriptors(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * 64 + b"\n\nafter blank lines"
    # The gate's line is consumed by the wrapper; the command reads exactly the payload.
    assert (await sandbox.exec(["cat"], stdin=data, timeout=30)).stdout_bytes == data
    # No payload: stdin is at EOF at once, as with /dev/null.
    assert (await sandbox.exec(["cat"], timeout=30)).stdout == ""
    # The command inherits nothing of the gate: only stdin, stdout and stderr are open.
    fds = await sandbox.exec("ls /proc/$$/fd; true", timeout=30)
    assert fds.stdout.split() == ["0", "1", "2"], fds
