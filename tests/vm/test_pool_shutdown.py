"""A clean stop leaves nothing of the warm pool behind.

The host runtime (``host_runtime``: gateway, sandbox manager with a warm pool,
engine) is stopped, round after round, at the moment the pool refills (a container
being created) while workflows that took vms from the pool are failing. Afterwards
every container, volume, disk image and loop device carrying the host's label must
belong to a vm actor recorded in the database (those are left running on purpose,
for the next start to adopt): no pool container, no orphan volume or disk.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest
from support import eventually

from host.app import HostSettings, host_runtime
from host.sandbox.backend import LABEL_HOST
from host.sandbox.disk import LoopDisks, default_disk_dir, unavailable_reason
from host.vm import SandboxManager, vm_actor
from orchestrator import EngineConfig, Inspector, Registry, WorkflowContext, actor, workflow

from .conftest import HOST_ID, _remove_host

pytestmark = pytest.mark.docker

ROUNDS = int(os.environ.get("POOL_SHUTDOWN_ROUNDS", "4"))


def _registry(holder: list[SandboxManager]) -> Any:
    def make(manager: SandboxManager) -> Registry:
        holder.append(manager)

        @workflow
        async def failing(ctx: WorkflowContext) -> None:
            key = ctx.state["key"] if isinstance(ctx.state, dict) else "x"

            async def take_vm() -> str:
                # Takes a container from the warm pool, which starts a refill.
                info = await ctx.client().vm.get_or_create([key]).call("start")
                return str(info["container"])

            await ctx.step("take-vm", take_vm)

            def fail() -> None:
                raise RuntimeError("the agent crashed")

            await ctx.step("work", fail, max_retries=0)

        def initial(input: Any) -> dict[str, Any]:
            return {"key": str(input)}

        return Registry(
            {"vm": vm_actor(manager), "failing": actor(create_state=initial, run=failing)}
        )

    return make


async def _owned(db: str) -> tuple[set[str], set[str]]:
    """Containers (names and ids) and volumes recorded by the database's vm actors."""
    containers: set[str] = set()
    volumes: set[str] = set()
    async with await Inspector.open(db) as inspector:
        for state in (await inspector.states("vm")).values():
            sandbox = (state or {}).get("sandbox")
            if isinstance(sandbox, dict):
                containers |= {str(sandbox.get("name")), str(sandbox.get("id"))}
                volumes.add(str(sandbox.get("volume")))
    return containers, volumes


def _loop_backing_files() -> list[str]:
    out = subprocess.run(
        ["losetup", "-n", "-l", "-O", "BACK-FILE"], capture_output=True, text=True, check=False
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


async def _leftovers(client: docker.DockerClient, host_id: str, db: str) -> list[str]:
    owned, owned_volumes = await _owned(db)
    label = {"label": f"{LABEL_HOST}={host_id}"}
    left: list[str] = []
    for c in client.containers.list(all=True, filters=label):
        if c.name not in owned and c.id not in owned:
            left.append(f"container {c.name} ({c.status}) labels={c.labels}")
    for v in client.volumes.list(filters=label):
        if v.name not in owned_volumes:
            left.append(f"volume {v.name}")
    root = default_disk_dir() / host_id
    if root.is_dir() and unavailable_reason(root) is None:
        for name in LoopDisks(root).names():
            if name not in owned_volumes:
                left.append(f"disk image {name}")
        for backing in _loop_backing_files():
            path = Path(backing.removesuffix(" (deleted)"))
            if path.parent == root and path.name.removesuffix(".img") not in owned_volumes:
                left.append(f"loop device of {backing}")
    return left


async def _creating(manager: SandboxManager) -> int:
    return manager.pool_creating()


async def test_stop_while_the_pool_refills_and_runs_fail(
    docker_client: docker.DockerClient, image: str, tmp_path: Path
) -> None:
    problems: list[str] = []
    for round_ in range(ROUNDS):
        host_id = f"{HOST_ID}-p{round_}"
        db = str(tmp_path / f"round{round_}.db")
        settings = HostSettings(
            host_id=host_id,
            warm_pool=2,
            vm_bundles=["common"],
            vm_disk_mb=64,
            reap_interval=3600.0,
        )
        holder: list[SandboxManager] = []
        try:
            async with host_runtime(
                EngineConfig(db=db), settings, registry=_registry(holder)
            ) as engine:
                manager = holder[0]
                await manager.wait_pool()
                client = engine.client()
                for n in range(3):
                    await client.failing.create(f"r{round_}-{n}", input=f"r{round_}-{n}")
                # Stop at the moment the pool refills a container it handed out, with
                # the failing workflows' steps in flight or failed.
                await eventually(
                    lambda m=manager: _creating(m),  # type: ignore[misc]
                    lambda creating: creating > 0,
                    timeout=60,
                    what="the warm pool refilling",
                )
            left = await _leftovers(docker_client, host_id, db)
            problems += [f"round {round_}: {item}" for item in left]
        finally:
            await asyncio.to_thread(_remove_host, docker_client, host_id)
    assert problems == []
