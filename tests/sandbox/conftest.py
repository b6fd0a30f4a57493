"""Fixtures for sandbox tests: a real Docker engine, the image built once per
session, a backend and a fresh sandbox per test; nothing is left behind."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
import pytest_asyncio

from host.sandbox import DockerBackend, Sandbox, SandboxLimits, SandboxSpec
from tests.support.docker import docker_client, remove_host, sandbox_backend
from vm_images.builder import ensure_image

ROOT = Path(__file__).resolve().parents[2]
# One host id per test session: the leak check at the end looks for exactly these.
HOST_ID = f"t{os.getpid()}-{uuid.uuid4().hex[:6]}"
# Small limits keep the fork bomb and memory tests quick.
TEST_LIMITS = SandboxLimits(memory_mb=256, cpus=1.0, pids=128, tmp_mb=64)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """A running engine (started with scripts/ensure-docker if needed), and at the end
    of the session the check that no container or volume of this session is left."""
    client = docker_client()
    yield client
    containers, volumes = remove_host(client, HOST_ID)
    client.close()
    assert not containers, f"tests left containers behind: {containers}"
    assert not volumes, f"tests left volumes behind: {volumes}"


@pytest.fixture(scope="session")
def image(docker_engine: docker.DockerClient) -> str:
    """The sandbox image (common + supervisor), built once; later sessions reuse it."""
    return ensure_image(["common"], client=docker_engine)


@pytest.fixture
async def backend(image: str) -> AsyncIterator[DockerBackend]:
    async with sandbox_backend(HOST_ID) as be:
        yield be


@pytest.fixture
def spec(image: str, request: pytest.FixtureRequest) -> SandboxSpec:
    return SandboxSpec(image=image, key=["test", request.node.name[:60]], limits=TEST_LIMITS)


@pytest.fixture
async def sandbox(backend: DockerBackend, spec: SandboxSpec) -> Sandbox:
    return await backend.create(spec)


# For a module whose tests leave nothing another depends on: one backend and one
# sandbox for all of them, in the module's event loop (the module sets
# ``pytest.mark.asyncio(loop_scope="module")`` and returns these as its ``backend``
# and ``sandbox``), instead of a container start-up per test.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_backend(image: str) -> AsyncIterator[DockerBackend]:
    async with sandbox_backend(HOST_ID) as be:
        yield be


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_sandbox(
    module_backend: DockerBackend, image: str, request: pytest.FixtureRequest
) -> Sandbox:
    key = ["test", f"module-{request.module.__name__}"[:60]]
    return await module_backend.create(SandboxSpec(image=image, key=key, limits=TEST_LIMITS))
