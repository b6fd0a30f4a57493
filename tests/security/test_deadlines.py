"""Host-side deadlines: whatever runs in the sandbox, host calls end in bounded time.

The attacker is code inside a real sandbox (a ``setsid`` child that keeps the exec's
pipes busy, a fork bomb at the pids limit) or a frozen container (``docker pause``).
"""

from __future__ import annotations

import asyncio

import docker
import pytest

from host.sandbox import DockerBackend, Sandbox, SandboxSpec
from host.sandbox.errors import ResourceLimit, SandboxUnresponsive
from tests.sandbox.conftest import backend, docker_engine, image, sandbox, spec
from tests.support import eventually

__all__ = ["backend", "docker_engine", "image", "sandbox", "spec"]

# A child that leaves the exec's session and process group and writes forever to the
# exec's stdout: before the fix, exec never returned and the child outlived it.
ESCAPER = (
    "setsid bash -c 'echo $$ > /tmp/escaper.pid; while :; do echo spam; done' & "
    "setsid bash -c 'exec >/dev/null 2>&1; echo $$ > /tmp/sleeper.pid; sleep 1000' & "
    "sleep 1000"
)


def _fast_watchdog(sandbox: Sandbox) -> None:
    """Short liveness settings so the unresponsive verdict comes quickly."""
    sandbox.control.link_options = {"probe_after": 0.3, "ping_timeout": 1.0}
    conn = sandbox.control.live()
    assert conn is not None
    conn.probe_after, conn.ping_timeout = 0.3, 1.0


async def _alive(sandbox: Sandbox, pidfile: str) -> bool:
    pid = (await sandbox.read_file(pidfile)).decode().strip()
    return (await sandbox.exec(["kill", "-0", pid])).exit_code == 0


async def test_exec_timeout_kills_setsid_children(sandbox: Sandbox) -> None:
    result = await sandbox.exec(ESCAPER, timeout=1, max_output=1024)
    assert result.timed_out
    assert result.stdout.startswith("spam")
    # The per-exec cgroup took the escaped children with it.
    await eventually(lambda: _alive(sandbox, "/tmp/escaper.pid"), lambda v: not v)
    await eventually(lambda: _alive(sandbox, "/tmp/sleeper.pid"), lambda v: not v)
    # The sandbox keeps working and no exec cgroup is left behind.
    assert (await sandbox.exec("echo ok", timeout=5)).stdout == "ok\n"


async def test_untimed_exec_returns_despite_an_endless_writer(sandbox: Sandbox) -> None:
    # No timeout: the main process exits at once, its setsid child writes forever.
    result = await sandbox.exec(
        "setsid bash -c 'echo $$ > /tmp/w.pid; while :; do echo x; done' & echo started",
        max_output=4096,
    )
    assert result.exit_code == 0 and result.stdout.startswith("started")
    await sandbox.exec("kill -9 $(cat /tmp/w.pid)")


async def test_paused_sandbox_is_unresponsive_then_recovers(
    sandbox: Sandbox, docker_engine: docker.DockerClient
) -> None:
    await sandbox.write_file("kept.txt", "still here")
    _fast_watchdog(sandbox)
    await asyncio.to_thread(docker_engine.api.pause, sandbox.id)
    try:
        # The link still looks open: the watchdog's unanswered ping ends the call.
        with pytest.raises(SandboxUnresponsive):
            await sandbox.read_file("kept.txt")
        # Every further call fails the same way, without waiting for the connect timeout.
        with pytest.raises(SandboxUnresponsive):
            await sandbox.exec("true")
        with pytest.raises(SandboxUnresponsive):
            await sandbox.list_processes()
    finally:
        # What the vm actor does on its next call: unpause (or restart) the container.
        await sandbox.ensure_running()
    assert (await sandbox.read_file("kept.txt")) == b"still here"
    assert not sandbox.unresponsive


async def test_exec_deadline_holds_when_the_sandbox_freezes(
    sandbox: Sandbox, docker_engine: docker.DockerClient
) -> None:
    _fast_watchdog(sandbox)
    sandbox.exec_grace = 1.0
    # Frozen while the exec runs: the call ends at timeout + grace (or earlier, when
    # the watchdog notices), as an unresponsive sandbox, not a hang.
    await sandbox.write_file("/tmp/go", "")
    task_result: list[BaseException] = []

    async def run() -> None:
        try:
            await sandbox.exec("rm /tmp/go; sleep 60", timeout=2)
        except BaseException as exc:
            task_result.append(exc)

    task = asyncio.create_task(run())
    await eventually(lambda: sandbox.exists("/tmp/go"), lambda v: not v)
    await asyncio.to_thread(docker_engine.api.pause, sandbox.id)
    try:
        await task
        assert task_result and isinstance(task_result[0], SandboxUnresponsive)
    finally:
        await sandbox.ensure_running()
    assert (await sandbox.exec("echo back", timeout=5)).stdout == "back\n"


async def test_pids_limit_is_a_resource_error(backend: DockerBackend, spec: SandboxSpec) -> None:
    box = await backend.create(spec)
    limit = spec.limits.pids
    bomb = await box.spawn("exec >/dev/null 2>&1; :(){ :|:& };:")

    async def exhausted() -> bool:
        current = int(await box.read_file("/sys/fs/cgroup/pids/pids.current"))
        return current >= limit - 2

    await eventually(exhausted, what="the fork bomb to reach the pids limit")

    async def refused() -> ResourceLimit | None:
        try:
            await box.exec("true", timeout=5)
        except ResourceLimit as exc:
            return exc
        return None

    error = await eventually(refused, what="exec to fail at the pids limit")
    assert error.http_status == 429 and error.to_dict()["group"] == "sandbox"
    await box.kill_process(bomb.pid)
