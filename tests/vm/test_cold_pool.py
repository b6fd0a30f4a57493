"""The cold pool tier: created, not started containers for vms with no warm one.

Real Docker, real SQLite: a vm takes a created container (the same container id,
labelled as the pool's) and only starts it; the tier refills; a vm whose options
differ from the pool's never takes one; the tier's containers are removed by a
clean shutdown and, after a ``kill -9`` of the host, by the next start's reaper.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import docker
import docker.errors
import pytest
from support import eventually

from host.sandbox import SandboxLimits
from host.sandbox.backend import LABEL_KEY, LABEL_POOL
from host.sandbox.docker_backend import CPU_SHARES
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.manager import SandboxRecord
from orchestrator import Engine, setup

from .conftest import HOST_ID, ROOT, TEST_LIMITS

pytestmark = pytest.mark.docker

DEFAULTS = VmOptions(limits=TEST_LIMITS)


@asynccontextmanager
async def cold_host(
    make_engine: Callable[..., Any], *, cold_pool: int, pool_size: int = 0
) -> AsyncIterator[tuple[SandboxManager, Engine]]:
    manager = await SandboxManager.open(
        host_id=HOST_ID,
        pool_size=pool_size,
        cold_pool=cold_pool,
        defaults=DEFAULTS,
        reap_interval=None,
    )
    try:
        async with make_engine(setup(use={"vm": vm_actor(manager)})) as engine:
            manager.attach(engine)
            yield manager, engine
    finally:
        await manager.close()


async def _record(engine: Engine, key: list[str]) -> SandboxRecord:
    state = await engine.client().vm.get(key).fetch_state()
    return SandboxRecord.from_json(state["sandbox"])


def _status(client: docker.DockerClient, name: str) -> str:
    try:
        return str(client.containers.get(name).status)
    except docker.errors.NotFound:
        return "missing"


async def _cold_names(manager: SandboxManager) -> set[str]:
    return manager.cold.names()


async def test_a_vm_takes_a_created_container_and_the_tier_refills(
    make_engine: Callable[..., Any], docker_client: docker.DockerClient
) -> None:
    async with cold_host(make_engine, cold_pool=1) as (manager, engine):
        (created,) = await eventually(
            lambda: _cold_names(manager), lambda n: len(n) == 1, timeout=60, what="tier filled"
        )
        container = docker_client.containers.get(created)
        assert container.status == "created"  # costs no memory: nothing runs in it
        assert container.labels[LABEL_POOL] == DEFAULTS.pool_id()
        assert container.labels[LABEL_KEY] == "[]"
        # Not the warm pool's idle CPU weight: the vm that takes it starts at once.
        assert container.attrs["HostConfig"]["CpuShares"] == CPU_SHARES

        vm = engine.client().vm.get_or_create(["cold"])
        assert (await vm.exec("echo started"))["stdout"] == "started\n"
        record = await _record(engine, ["cold"])
        assert (record.name, record.id) == (created, container.id)
        assert _status(docker_client, created) == "running"

        refilled = await eventually(
            lambda: _cold_names(manager), lambda n: len(n) == 1, timeout=60, what="refilled"
        )
        assert refilled != {created}
        (spare,) = refilled
        assert _status(docker_client, spare) == "created"

        # Options other than the pool's (network, limits) get a container of their own.
        other_limits = SandboxLimits(memory_mb=320, cpus=1.0, pids=128, tmp_mb=64)
        inputs: list[dict[str, Any]] = [
            {"network": "bridge"},
            {"limits": other_limits.model_dump()},
        ]
        for n, input in enumerate(inputs):
            other = engine.client().vm.get_or_create([f"other-{n}"], input=input)
            await other.exec("true")
            rec = await _record(engine, [f"other-{n}"])
            assert rec.name != spare
            assert (await manager.backend.inspect(rec.id)).pool is None
        assert manager.cold.names() == {spare}
        assert _status(docker_client, spare) == "created"


async def test_a_created_container_removed_behind_our_back_is_replaced(
    make_engine: Callable[..., Any], docker_client: docker.DockerClient
) -> None:
    async with cold_host(make_engine, cold_pool=1) as (manager, engine):
        (created,) = await eventually(
            lambda: _cold_names(manager), lambda n: len(n) == 1, timeout=60, what="tier filled"
        )
        docker_client.containers.get(created).remove(force=True)
        vm = engine.client().vm.get_or_create(["replaced"])
        assert (await vm.exec("echo ok"))["stdout"] == "ok\n"
        record = await _record(engine, ["replaced"])
        assert record.name != created
        assert _status(docker_client, record.name) == "running"


async def test_a_warm_container_goes_first(
    make_engine: Callable[..., Any], docker_client: docker.DockerClient
) -> None:
    async with cold_host(make_engine, cold_pool=1, pool_size=1) as (manager, engine):
        await manager.wait_pool()
        (cold,) = await eventually(
            lambda: _cold_names(manager), lambda n: len(n) == 1, timeout=60, what="tier filled"
        )
        (warm,) = manager.pool_names() - {cold}
        await engine.client().vm.get_or_create(["w"]).exec("true")
        assert (await _record(engine, ["w"])).name == warm
        assert _status(docker_client, cold) == "created"


async def test_shutdown_removes_the_created_containers(
    make_engine: Callable[..., Any], docker_client: docker.DockerClient
) -> None:
    async with cold_host(make_engine, cold_pool=2) as (manager, _):
        names = await eventually(
            lambda: _cold_names(manager), lambda n: len(n) == 2, timeout=60, what="tier filled"
        )
    for name in names:
        assert _status(docker_client, name) == "missing"
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(f"{name}-home")


# A host process that fills a cold tier, prints its names, and waits to be killed.
_HOST = """
import asyncio, json, sys
from host.vm import SandboxManager, VmOptions
from host.sandbox import SandboxLimits

async def main() -> None:
    limits = SandboxLimits(**json.loads(sys.argv[2]))
    manager = await SandboxManager.open(
        host_id=sys.argv[1], pool_size=0, cold_pool=2,
        defaults=VmOptions(limits=limits), reap_interval=None,
    )
    await manager.cold.wait_full(manager.defaults)
    print(json.dumps(sorted(manager.cold.names())), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_after_kill_9_the_next_start_reaps_them(
    make_engine: Callable[..., Any], docker_client: docker.DockerClient
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOST,
        HOST_ID,
        json.dumps(TEST_LIMITS.model_dump()),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        names = json.loads(line)
        assert len(names) == 2
        assert {_status(docker_client, n) for n in names} == {"created"}
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert {_status(docker_client, n) for n in names} == {"created"}  # leaked by the crash

    async def left() -> list[str]:
        volumes = {v.name for v in docker_client.volumes.list()}
        return [n for n in names if _status(docker_client, n) != "missing"] + [
            f"{n}-home" for n in names if f"{n}-home" in volumes
        ]

    # The next start (no cold tier of its own) reaps containers and volumes at attach.
    async with cold_host(make_engine, cold_pool=0):
        await eventually(left, lambda rest: rest == [], timeout=60, what="reaped")
