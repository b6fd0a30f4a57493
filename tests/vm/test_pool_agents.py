"""Warm-pool containers come with their agents pre-started (host/vm/pool_agents.py):
a vm that takes one adopts the agent, and the next pre-start waits for the session
to end. Real Docker, real engine (SQLite), the bundled coding agent, the host's LLM
gateway; the fake model is the only fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import docker
import pytest

from host.gateway import LLMGateway
from host.sandbox import SandboxLimits
from host.sandbox.docker_backend import CPU_SHARES, POOL_CPU_SHARES
from host.sessions import resolve_agent
from host.vm import SandboxManager, VmOptions, vm_actor
from orchestrator import Engine, setup
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.builder import ensure_image

from .conftest import HOST_ID

pytestmark = pytest.mark.docker

BUNDLES = ["common", "coding-agent"]
LIMITS = SandboxLimits(memory_mb=1024, cpus=1.0, pids=256, tmp_mb=64)
AGENT = tuple(resolve_agent("coding-agent").command)


@pytest.fixture(scope="module")
def agent_image(docker_client: docker.DockerClient) -> str:
    return ensure_image(BUNDLES, client=docker_client)


@asynccontextmanager
async def pooled_host(
    make_engine: Callable[..., Any], fake: FakeAnthropic
) -> AsyncIterator[tuple[SandboxManager, Engine]]:
    gateway = LLMGateway(api_key="sk-ant-pool-agents-host-key", upstream=fake.url)
    manager = await SandboxManager.open(
        host_id=HOST_ID,
        pool_size=1,
        defaults=VmOptions(bundles=BUNDLES, limits=LIMITS),
        reap_interval=None,
        gateway=gateway,
    )
    try:
        async with make_engine(setup(use={"vm": vm_actor(manager)})) as engine:
            manager.attach(engine)
            yield manager, engine
    finally:
        await manager.close()
        await gateway.close()


async def agent_pids(manager: SandboxManager, name: str) -> list[int]:
    sandbox = await manager.backend.get(name)
    return [p.pid for p in await sandbox.list_processes() if p.running and tuple(p.argv) == AGENT]


def cpu_shares(client: docker.DockerClient, name: str) -> int:
    return int(client.api.inspect_container(name)["HostConfig"]["CpuShares"])


async def test_a_vm_from_the_pool_adopts_the_agent_started_there(
    make_engine: Callable[..., Any],
    agent_image: str,
    fake_anthropic: FakeAnthropic,
    docker_client: docker.DockerClient,
) -> None:
    fake_anthropic.script(Turn.text("Adopted."), marker="[pool]")
    async with pooled_host(make_engine, fake_anthropic) as (manager, engine):
        await eventually(lambda: _ready(manager), lambda n: n == 1, timeout=120, what="pool filled")
        await manager.wait_pool_agents()
        (pooled,) = manager.pool_names()
        # Before any vm took it: its agent runs (started by the pool), and the
        # container has the lowest CPU weight (the pool only takes idle CPU).
        (started,) = await agent_pids(manager, pooled)
        assert cpu_shares(docker_client, pooled) == POOL_CPU_SHARES

        vm = engine.client().vm.get_or_create(["adopter"])
        info = await vm.create_session("coding-agent")
        sid = info["session_id"]
        assert info["agent_info"]["name"] == "agentvm-coding-agent"
        assert (await vm.info())["container"] == pooled
        await eventually(
            lambda: asyncio.to_thread(cpu_shares, docker_client, pooled),
            lambda shares: shares == CPU_SHARES,
            what="the taken container's CPU weight raised",
        )
        (session,) = await vm.list_sessions()
        assert session["pid"] == started  # the pool's process, not a new one

        # The adopted agent is a full session: its prompt reaches the model through
        # the vm's gateway and its events land in the vm's log.
        reply = await vm.send_prompt(sid, "[pool] say hello")
        assert reply["stop_reason"] == "end_turn" and reply["text"] == "Adopted."
        kinds = [e["kind"] for e in await vm.get_session_events(sid)]
        assert kinds[0] == "prompt" and "prompt_end" in kinds
        assert (await vm.llm_usage())["total"]["requests"] == 1

        # No second agent starts while the session runs (it would take CPU from the
        # session's turn); once the session closed, the next one is pre-started.
        assert await agent_pids(manager, pooled) == [started]
        await vm.close_session(sid)
        after = await eventually(
            lambda: agent_pids(manager, pooled),
            lambda pids: len(pids) == 1 and pids != [started],
            timeout=60,
            what="the next agent pre-started",
        )
        second = await vm.create_session("coding-agent")
        sessions = await vm.list_sessions()
        assert [s["pid"] for s in sessions if s["session_id"] == second["session_id"]] == after
        await vm.close_session(second["session_id"])
        await vm.destroy()


async def _ready(manager: SandboxManager) -> int:
    return manager.pool_ready()
