"""Sandbox lifecycle: labels, stop/start with the home volume kept, adoption, removal."""

from __future__ import annotations

import json

import pytest

from host.sandbox import DockerBackend, Sandbox, SandboxLost, SandboxNotFound, SandboxSpec
from host.sandbox.backend import LABEL_HOST, LABEL_KEY, LABEL_MANAGED, LABEL_POOL

pytestmark = pytest.mark.docker


async def test_labels_carry_host_key_and_pool(backend: DockerBackend, image: str) -> None:
    sandbox = await backend.create(SandboxSpec(image=image, key=["fix", "42"], pool="warm"))
    info = await backend.inspect(sandbox)
    assert info.status == "running"
    assert info.labels[LABEL_MANAGED] == "1"
    assert info.labels[LABEL_HOST] == backend.host_id
    assert json.loads(info.labels[LABEL_KEY]) == ["fix", "42"] == info.key
    assert info.labels[LABEL_POOL] == "warm" == info.pool
    assert [s.name for s in await backend.list_sandboxes()] == [sandbox.name]
    assert await backend.list_volumes() == [sandbox.volume]
    assert await sandbox.ping() == 1  # the supervisor is PID 1


async def test_stop_keeps_home_and_start_brings_it_back(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    await sandbox.write_file("work/state.txt", "kept", parents=True)
    await backend.stop(sandbox)
    assert (await backend.inspect(sandbox)).status == "exited"
    with pytest.raises(SandboxLost, match="exited"):
        await sandbox.exec("true")
    await sandbox.ensure_running()
    assert await sandbox.read_file("work/state.txt") == b"kept"


async def test_adopted_by_a_restarted_host(backend: DockerBackend, sandbox: Sandbox) -> None:
    await sandbox.write_file("note", "before restart")
    proc = await sandbox.spawn(["sleep", "1000"])
    await sandbox.close()  # the old host process goes away
    restarted = await DockerBackend.connect(backend.host_id)
    try:
        adopted = await restarted.get(sandbox.name)
        assert adopted.id == sandbox.id and adopted.key == sandbox.key
        assert await adopted.read_file("note") == b"before restart"
        running = [p.pid for p in await adopted.list_processes() if p.running]
        assert proc.pid in running  # not recreated: the same supervisor, same processes
    finally:
        await restarted.close()


async def test_remove_deletes_container_and_volume(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    await backend.remove(sandbox)
    assert await backend.list_sandboxes() == []
    assert sandbox.volume not in await backend.list_volumes()
    with pytest.raises(SandboxNotFound):
        await backend.get(sandbox.name)
    await backend.remove(sandbox.name)  # removing again is not an error


async def test_unknown_sandbox(backend: DockerBackend) -> None:
    with pytest.raises(SandboxNotFound):
        await backend.get("agentvm-does-not-exist")
