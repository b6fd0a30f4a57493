"""A vm's pre-started agent survives the actor's sleep and is adopted on wake (issue
13, item 3): real Docker, a real engine (SQLite), the bundled coding agent, the
host's LLM gateway; the fake model is the only fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import docker
import pytest

from host.gateway import LLMGateway
from host.sandbox import SandboxLimits
from host.sessions import SessionManager
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.actions_base import VmVars
from host.vm.manager import SandboxRecord
from orchestrator import Engine, setup
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.builder import ensure_image

from .conftest import HOST_ID

pytestmark = pytest.mark.docker

HOST_KEY = "sk-ant-wake-adopt-host-key-5e1a"
BUNDLES = ["common", "coding-agent"]
LIMITS = SandboxLimits(memory_mb=1024, cpus=1.0, pids=256, tmp_mb=64)
AGENT_MODULE = "coding_agent"


@pytest.fixture(scope="module")
def agent_image(docker_client: docker.DockerClient) -> str:
    return ensure_image(BUNDLES, client=docker_client)


@dataclass
class Host:
    manager: SandboxManager
    engine: Engine

    async def actor_id(self, key: list[str]) -> str:
        [aid] = [a.actor_id for a in await self.engine.list_actors("vm") if a.key == key]
        return aid

    def sessions(self, aid: str) -> SessionManager:
        """The awake vm's session manager (it pre-starts the agents)."""
        v = self.engine.instances[aid].vars
        assert isinstance(v, VmVars) and v.sessions.manager is not None
        return v.sessions.manager

    async def prestarted(self, key: list[str]) -> tuple[int, float]:
        """The vm's initialized pre-started agent: (pid, start time) (wakes the vm)."""
        await self.engine.client().vm.get(key).info()
        sm = self.sessions(await self.actor_id(key))
        await sm.wait_prestarted()
        [pid] = sm.agent_pids()
        return pid, (await agents(self, key))[pid]

    async def sleep(self, key: list[str]) -> None:
        """Put the vm's actor to sleep (as its idle timeout would)."""
        aid = await self.actor_id(key)

        async def asleep() -> bool:
            inst = self.engine.instances.get(aid)
            if inst is None:
                return True
            self.engine.request_sleep(inst)
            await asyncio.sleep(0.01)
            return aid not in self.engine.instances

        await eventually(asleep, what="the vm asleep")


async def agents(h: Host, key: list[str]) -> dict[int, float]:
    """Running coding-agent processes of the vm: pid -> start time (wakes the vm)."""
    procs = await h.engine.client().vm.get(key).list_processes()
    return {p["pid"]: p["started_at"] for p in procs if p["running"] and AGENT_MODULE in p["argv"]}


@pytest.fixture
def wake_host(
    make_engine: Callable[..., Any], agent_image: str, fake_anthropic: FakeAnthropic
) -> Callable[[], Any]:
    @asynccontextmanager
    async def factory() -> AsyncIterator[Host]:
        gateway = LLMGateway(api_key=HOST_KEY, upstream=fake_anthropic.url)
        defaults = VmOptions(bundles=BUNDLES, limits=LIMITS)
        manager = await SandboxManager.open(
            host_id=HOST_ID, pool_size=0, defaults=defaults, reap_interval=None, gateway=gateway
        )
        try:
            async with make_engine(setup(use={"vm": vm_actor(manager)})) as engine:
                manager.attach(engine)
                yield Host(manager, engine)
        finally:
            await manager.close()
            await gateway.close()

    return factory


async def test_woken_vm_adopts_its_prestarted_agent(
    wake_host: Callable[[], Any], fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(Turn.text("still", " here"), marker="[hi]")
    async with wake_host() as h:
        key = ["wake", "adopt"]
        vm = h.engine.client().vm.get_or_create(key)
        await vm.exec(["true"])
        pid, started = await h.prestarted(key)

        await h.sleep(key)
        state = await h.engine.get_state(await h.actor_id(key))
        assert [e["pid"] for e in state["prestarted"]] == [pid]

        # Woken: the same process (pid and start time) is the pre-started agent, and
        # no other agent was started.
        assert await agents(h, key) == {pid: started}
        assert await h.prestarted(key) == (pid, started)
        assert await agents(h, key) == {pid: started}
        assert "prestarted" not in await h.engine.get_state(await h.actor_id(key))

        # It serves the next session, over a working ACP connection.
        sid = (await vm.create_session("coding-agent", model="claude-test"))["session_id"]
        [row] = await vm.list_sessions()
        assert row["session_id"] == sid and row["pid"] == pid
        result = await vm.send_prompt(sid, "[hi] are you there?")
        assert result["stop_reason"] == "end_turn" and result["text"].endswith("still here")


async def test_sleeping_twice_keeps_the_same_agent(wake_host: Callable[[], Any]) -> None:
    async with wake_host() as h:
        key = ["wake", "twice"]
        await h.engine.client().vm.get_or_create(key).exec(["true"])
        first = await h.prestarted(key)
        for _ in range(2):
            await h.sleep(key)
            assert await agents(h, key) == dict([first])
        assert await h.prestarted(key) == first


async def test_agent_that_died_asleep_is_replaced(
    wake_host: Callable[[], Any], docker_client: docker.DockerClient
) -> None:
    async with wake_host() as h:
        key = ["wake", "died"]
        vm = h.engine.client().vm.get_or_create(key)
        await vm.exec(["true"])
        pid, _ = await h.prestarted(key)
        record = SandboxRecord.from_json((await vm.fetch_state())["sandbox"])
        await h.sleep(key)

        container = docker_client.containers.get(record.id)
        assert container.exec_run(["kill", "-9", str(pid)]).exit_code == 0

        async def reaped() -> bool:
            # Gone from /proc once the supervisor reaped it: before that, the wake's
            # process listing could still see it running (and adopt it).
            probe = ["test", "-e", f"/proc/{pid}"]
            return await asyncio.to_thread(lambda: container.exec_run(probe).exit_code != 0)

        await eventually(reaped, what="the killed agent reaped")

        # Woken: the dead agent is not adopted; a new one is pre-started and serves
        # the next session.
        new_pid, _ = await h.prestarted(key)
        assert new_pid != pid
        assert set(await agents(h, key)) == {new_pid}
        await vm.create_session("coding-agent")
        [row] = await vm.list_sessions()
        assert row["pid"] == new_pid
