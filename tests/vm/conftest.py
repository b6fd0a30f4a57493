"""Fixtures for vm actor tests: real Docker, real SQLite, one host id per session.

``vm_host(...)`` opens a SandboxManager and an engine running the vm actor on the
test's database file (a second ``vm_host`` in one test is a host restart).
Every container and volume of this session's host ids is removed after each test,
and the session ends by asserting none was left behind.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from host.sandbox import SandboxLimits
from host.sandbox.backend import LABEL_HOST
from host.sandbox.disk import remove_host_disks
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.manager import SandboxRecord
from orchestrator import Client, Engine, setup
from vm_images.builder import ensure_image

ROOT = Path(__file__).resolve().parents[2]
HOST_ID = f"v{os.getpid()}-{uuid.uuid4().hex[:6]}"
# A second host id: the reaper must leave its containers alone.
OTHER_HOST_ID = f"{HOST_ID}-x"
TEST_LIMITS = SandboxLimits(memory_mb=256, cpus=1.0, pids=128, tmp_mb=64)

pytestmark = pytest.mark.docker


def _remove_host(client: docker.DockerClient, host_id: str) -> tuple[list[str], list[str]]:
    label = {"label": f"{LABEL_HOST}={host_id}"}
    containers = client.containers.list(all=True, filters=label)
    for container in containers:
        container.remove(force=True)
    volumes = client.volumes.list(filters=label)
    for volume in volumes:
        volume.remove(force=True)
    remove_host_disks(host_id)  # the volumes' disk images and loop devices
    return [c.name for c in containers], [v.name for v in volumes]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except Exception:
        proc = subprocess.run([str(ROOT / "scripts" / "ensure-docker")], capture_output=True)
        if proc.returncode != 0:
            pytest.fail(f"no Docker engine: {proc.stderr.decode(errors='replace')}")
        client = docker.from_env()
    yield client
    leftovers = [_remove_host(client, h) for h in (HOST_ID, OTHER_HOST_ID)]
    client.close()
    assert not any(c or v for c, v in leftovers), f"vm tests left behind: {leftovers}"


@pytest.fixture(scope="session")
def image(docker_client: docker.DockerClient) -> str:
    """The sandbox image (common + supervisor), built once; later sessions reuse it."""
    return ensure_image(["common"], client=docker_client)


@pytest.fixture(autouse=True)
def clean_host(docker_client: docker.DockerClient, image: str) -> Iterator[None]:
    yield
    for host in (HOST_ID, OTHER_HOST_ID):
        _remove_host(docker_client, host)


@dataclass
class VmHost:
    manager: SandboxManager
    engine: Engine

    @property
    def client(self) -> Client:
        return self.engine.client()

    async def record(self, key: list[str]) -> SandboxRecord:
        """The container a vm recorded in its committed state."""
        state = await self.client.vm.get(key).fetch_state()
        return SandboxRecord.from_json(state["sandbox"])

    async def status(self, key: list[str]) -> str:
        """Docker's status of a vm's container, read without waking the actor."""
        return await self.manager.status(await self.record(key))


@pytest.fixture
def vm_host(make_engine: Callable[..., Any], image: str) -> Callable[..., Any]:
    """``async with vm_host(pool_size=0, idle_timeout=300, **engine_overrides) as h:``"""

    @asynccontextmanager
    async def factory(
        *,
        pool_size: int = 0,
        idle_timeout: float = 300.0,
        host_id: str = HOST_ID,
        reap_interval: float | None = None,
        **overrides: Any,
    ) -> AsyncIterator[VmHost]:
        defaults = VmOptions(limits=TEST_LIMITS, idle_timeout=idle_timeout)
        manager = await SandboxManager.open(
            host_id=host_id, pool_size=pool_size, defaults=defaults, reap_interval=reap_interval
        )
        try:
            async with make_engine(setup(use={"vm": vm_actor(manager)}), **overrides) as engine:
                manager.attach(engine)
                yield VmHost(manager, engine)
        finally:
            await manager.close()

    return factory
