"""Docker for tests: a running engine (started with scripts/ensure-docker when
needed) and the removal of everything one test host id created."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import docker
import pytest

from host.sandbox import DockerBackend
from host.sandbox.backend import LABEL_HOST
from host.sandbox.disk import remove_host_disks

ROOT = Path(__file__).resolve().parents[2]


def docker_client() -> docker.DockerClient:
    """A client of a running engine; fails the test when none can be started."""
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception:
        proc = subprocess.run([str(ROOT / "scripts" / "ensure-docker")], capture_output=True)
        if proc.returncode != 0:
            pytest.fail(f"no Docker engine: {proc.stderr.decode(errors='replace')}")
        return docker.from_env()


def remove_host(client: docker.DockerClient, host_id: str) -> tuple[list[str], list[str]]:
    """Remove the containers and volumes labelled with ``host_id``; return their names
    (so a fixture can assert that its tests left nothing behind)."""
    label = {"label": f"{LABEL_HOST}={host_id}"}
    try:
        containers = client.containers.list(all=True, filters=label)
        for container in containers:
            container.remove(force=True)
        volumes = client.volumes.list(filters=label)
        for volume in volumes:
            volume.remove(force=True)
    finally:
        # The volumes' disk images and loop devices (also when the engine is gone).
        remove_host_disks(host_id)
    return [c.name for c in containers], [v.name for v in volumes]


@asynccontextmanager
async def sandbox_backend(host_id: str) -> AsyncIterator[DockerBackend]:
    """A Docker backend for ``host_id``; on exit every sandbox and volume it made is gone."""
    backend = await DockerBackend.connect(host_id, connect_timeout=30.0)
    try:
        yield backend
    finally:
        for info in await backend.list_sandboxes():
            await backend.remove(info.id)
        for volume in await backend.list_volumes():
            await backend.remove_volume(volume)
        await backend.close()
