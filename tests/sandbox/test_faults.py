"""Faults: a container dying mid-call, the host listener restarting, a bad peer,
and the Docker engine being unreachable."""

from __future__ import annotations

import asyncio

import pytest
from sandbox_helpers import eventually, kill_container

from host.sandbox import (
    DockerBackend,
    DockerUnavailable,
    ProcessExit,
    ProcessOutput,
    Sandbox,
    SandboxLost,
)
from vm_images.supervisor import protocol as P

pytestmark = pytest.mark.docker


async def test_container_killed_mid_call_raises_sandbox_lost(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    await sandbox.write_file("workspace/keep.txt", "intact", parents=True)
    call = asyncio.create_task(sandbox.exec("sleep 600"))

    async def sleeping() -> bool:
        return (await sandbox.exec(["pgrep", "-f", "sleep 600"])).exit_code == 0

    await eventually(sleeping, what="the long call to start")
    await asyncio.to_thread(kill_container, backend.client, sandbox.id)
    with pytest.raises(SandboxLost):
        await call
    # The next call finds the container down; bringing it back keeps the workspace.
    await sandbox.ensure_running()
    assert await sandbox.read_file("workspace/keep.txt") == b"intact"
    assert (await sandbox.exec("echo alive")).stdout == "alive\n"


async def test_supervisor_reconnects_after_the_host_listener_restarts(sandbox: Sandbox) -> None:
    assert sandbox.control.current is not None
    boot_id = sandbox.control.current.supervisor_boot_id
    proc = await sandbox.spawn(["bash", "-c", "echo first; read x; echo got-$x"])
    events = proc.events()
    assert await anext(events) == ProcessOutput(pid=proc.pid, stream="stdout", data=b"first\n")

    await sandbox.control.close()  # host side goes away...
    with pytest.raises(SandboxLost):
        await anext(events)
    await sandbox.control.start()  # ...and comes back on the same path

    assert (await sandbox.exec("echo back")).stdout == "back\n"
    assert sandbox.control.current is not None
    assert sandbox.control.current.supervisor_boot_id == boot_id  # same supervisor
    reattached = await sandbox.attach(proc.pid)
    await reattached.write_stdin("again\n")
    seen = [e async for e in reattached.events()]
    assert seen == [
        ProcessOutput(pid=proc.pid, stream="stdout", data=b"got-again\n"),
        ProcessExit(pid=proc.pid, exit_code=0),
    ]


async def test_a_peer_without_the_token_is_rejected(sandbox: Sandbox) -> None:
    connects = sandbox.control.connects
    reader, writer = await asyncio.open_unix_connection(str(sandbox.control.socket_path))
    writer.write(P.encode({"t": P.HELLO, "ch": 0, "version": P.VERSION, "token": "guess"}))
    await writer.drain()
    assert await reader.read() == b""  # closed without a welcome
    writer.close()
    assert sandbox.control.connects == connects
    assert (await sandbox.exec("echo still-mine")).stdout == "still-mine\n"


async def test_docker_down_names_the_engine_address(monkeypatch: pytest.MonkeyPatch) -> None:
    address = "unix:///tmp/agentvm-no-such-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", address)
    with pytest.raises(DockerUnavailable) as info:
        await DockerBackend.connect("nodocker")
    assert info.value.address == address
    assert address in str(info.value)
