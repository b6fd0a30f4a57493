"""Fixtures for session and gateway tests: a real Docker engine, an image with the
`agent-client-protocol` wheel (for the echo agent), a sandbox per test, the LLM
gateway in front of a stub upstream, and a session manager."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
from sessions_stub import StubUpstream

from host.gateway import LLMGateway
from host.sandbox import DockerBackend, Sandbox, SandboxLimits, SandboxSpec
from host.sessions import AgentCommand, MemoryEventStore, SessionManager
from tests.support.docker import docker_client, remove_host, sandbox_backend
from vm_images.builder import ensure_image
from vm_images.bundles import BUNDLES, Bundle, install_wheels, register

ROOT = Path(__file__).resolve().parents[2]
HOST_ID = f"s{os.getpid()}-{uuid.uuid4().hex[:6]}"
TEST_LIMITS = SandboxLimits(memory_mb=512, cpus=1.0, pids=128, tmp_mb=64)
ECHO_AGENT = Path(__file__).with_name("echo_agent.py")
ECHO_PATH = "/home/user/.agentvm-test/echo_agent.py"
# The echo agent needs the ACP package inside the sandbox.
ACP_TEST = Bundle(
    name="acp-test",
    description="agent-client-protocol for the tests' echo agent",
    pip=("agent-client-protocol==0.12.1",),
    dockerfile=install_wheels("acp-test"),
)
AGENTS = {"echo": AgentCommand(command=["python3", ECHO_PATH])}


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    yield client
    containers, volumes = remove_host(client, HOST_ID)
    client.close()
    assert not containers, f"tests left containers behind: {containers}"
    assert not volumes, f"tests left volumes behind: {volumes}"


@pytest.fixture(scope="session")
def image(docker_engine: docker.DockerClient) -> str:
    """common + coding-agent (whose wheels include the ACP package the echo agent
    needs); a small acp-only bundle when the coding agent is not there."""
    if "coding-agent" in BUNDLES:
        return ensure_image(["common", "coding-agent"], client=docker_engine)
    if ACP_TEST.name not in BUNDLES:
        register(ACP_TEST)
    return ensure_image(["common", ACP_TEST.name], client=docker_engine)


@pytest.fixture
async def backend(image: str) -> AsyncIterator[DockerBackend]:
    async with sandbox_backend(HOST_ID) as be:
        yield be


@pytest.fixture
def spec(image: str, request: pytest.FixtureRequest) -> SandboxSpec:
    return SandboxSpec(image=image, key=["sess", request.node.name[:60]], limits=TEST_LIMITS)


@pytest.fixture
async def sandbox(backend: DockerBackend, spec: SandboxSpec) -> Sandbox:
    sb = await backend.create(spec)
    await sb.write_file(ECHO_PATH, ECHO_AGENT.read_bytes(), parents=True)
    return sb


@pytest.fixture
def host_key() -> str:
    return "sk-ant-host-" + secrets.token_hex(16)


@pytest.fixture
async def upstream() -> AsyncIterator[StubUpstream]:
    stub = await StubUpstream().start()
    yield stub
    await stub.close()


@pytest.fixture
async def gateway(upstream: StubUpstream, host_key: str) -> AsyncIterator[LLMGateway]:
    gw = LLMGateway(api_key=host_key, upstream=upstream.url)
    yield gw
    await gw.close()


@pytest.fixture
async def served(gateway: LLMGateway, sandbox: Sandbox) -> AsyncIterator[LLMGateway]:
    """The gateway listening for ``sandbox`` (its id is the sandbox name)."""
    await gateway.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    yield gateway
    await gateway.stop(sandbox.name)


@pytest.fixture
def agents() -> dict[str, AgentCommand]:
    """Agent types for the tests (the echo agent)."""
    return AGENTS


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
async def sessions(
    sandbox: Sandbox, store: MemoryEventStore, host_key: str
) -> AsyncIterator[SessionManager]:
    manager = SessionManager(sandbox, store=store, agents=AGENTS, host_api_key=host_key)
    yield manager
    await manager.close()
