"""A vm woken on a host that did not create its container (issue 14 §2, vm bullet).

Real Docker (the machine's engine and a second ``dockerd``: ``tests/cluster/dockerd.py``),
a real database. Hosts are :class:`SandboxManager` + engine pairs in this process with
different host ids; host A "dies" by stopping without removing anything (its vm
containers keep running, as after a crash), then another host wakes the vm:

- same engine, other host id -> the running container is adopted (its supervisor
  dials the control directory mounted at creation), ``/home/user`` intact;
- another engine -> re-created there from the newest workspace checkpoint;
- another engine, no checkpoint -> ``VmLost`` (410), never an empty home;
- the reaper of a live host removes the containers of dead hosts (PostgreSQL's
  ``hosts`` table) that no vm owns, and keeps the ones a vm still records.

The tests on the second engine (re-created there, lost, engine affinity) are
``-m slow``; the others are in the default suite (a few seconds each).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import pytest

from host.sandbox import SandboxLimits, SandboxSpec
from host.sandbox.errors import VmLost
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.manager import SandboxRecord
from orchestrator import Engine, setup
from tests.cluster import dockerd
from tests.cluster.dockerd import SecondDockerd
from tests.support.docker import docker_client, remove_host
from vm_images.builder import ensure_image

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

second_dockerd = dockerd.second_dockerd  # the session's second engine (a fixture)
# Tests on the second engine run with -m slow: starting a dockerd and loading the
# image into it costs 10-80 s (the default suite is at its time budget).
SECOND_ENGINE = pytest.mark.slow
LIMITS = SandboxLimits(memory_mb=256, cpus=1.0, pids=128, tmp_mb=64)


@pytest.fixture
def host_ids() -> Iterator[Callable[[str], str]]:
    """``ids("a")`` -> a host id unique to this test; everything labelled with one is
    removed from both engines at the end."""
    made: list[str] = []
    tag = uuid.uuid4().hex[:6]

    def new(name: str) -> str:
        made.append(f"t{tag}-{name}")
        return made[-1]

    yield new
    client = docker_client()
    for host in made:
        remove_host(client, host)
    client.close()


@pytest.fixture(scope="module")
def image() -> str:
    client = docker_client()
    try:
        return ensure_image(["common"], client=client)
    finally:
        client.close()


@pytest.fixture
def engine2(second_dockerd: SecondDockerd, image: str) -> Iterator[SecondDockerd]:
    """The second engine with the vm image; emptied of managed containers after."""
    second_dockerd.load(image)
    yield second_dockerd
    client = second_dockerd.client()
    for c in client.containers.list(all=True, filters={"label": "agentvm.managed=1"}):
        c.remove(force=True)
    for v in client.volumes.list(filters={"label": "agentvm.managed=1"}):
        v.remove(force=True)
    client.close()


class Hosts:
    def __init__(self, db: str, tmp: Path) -> None:
        self.db = db
        self.tmp = tmp

    @asynccontextmanager
    async def host(
        self, host_id: str, docker_host: str | None = None, **engine: Any
    ) -> AsyncIterator[tuple[SandboxManager, Engine]]:
        """One host; on exit it stops like a crashed one would leave things: its vm
        containers keep running (nothing destroyed)."""
        manager = await SandboxManager.open(
            host_id=host_id,
            pool_size=0,
            defaults=VmOptions(limits=LIMITS),
            reap_interval=None,
            docker_host=docker_host,
        )
        try:
            eng = Engine(
                setup(use={"vm": vm_actor(manager)}), db=self.db, host_id=host_id, **engine
            )
            await eng.start()
            try:
                manager.attach(eng)
                yield manager, eng
            finally:
                await eng.stop()
        finally:
            await manager.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    return Hosts(str(tmp_path / "cluster.db"), tmp_path)


async def _record(eng: Engine, key: list[str]) -> SandboxRecord:
    state = await eng.client().vm.get(key).fetch_state()
    return SandboxRecord.from_json(state["sandbox"])


async def test_same_engine_other_host_id_adopts_the_running_container(
    hosts: Hosts, host_ids: Callable[[str], str]
) -> None:
    async with hosts.host(host_ids("a")) as (a, eng):
        vm = eng.client().vm.get_or_create(["adopt-me"])
        await vm.write_file("work.txt", "precious")
        spawned = await vm.spawn(["sleep", "600"])
        before = await _record(eng, ["adopt-me"])
        assert before.engine == a.engine_id != ""
    # A is gone; B (another host id, same engine) wakes the vm.
    async with hosts.host(host_ids("b")) as (_, eng):
        vm = eng.client().vm.get(["adopt-me"])
        assert await vm.read_file("work.txt") == b"precious"
        after = await _record(eng, ["adopt-me"])
        assert after.id == before.id  # adopted, not re-created
        # The process A started is still there: the same container, live link.
        procs = await vm.exec(f"kill -0 {spawned['pid']} && echo alive")
        assert procs["stdout"].strip() == "alive"
        info = await vm.info()
        assert info["status"] == "running" and "lost" not in info
        await vm.destroy()
        with pytest.raises(docker.errors.NotFound):
            docker_client().containers.get(before.id)


@SECOND_ENGINE
async def test_other_engine_recreates_the_vm_from_its_newest_checkpoint(
    hosts: Hosts, host_ids: Callable[[str], str], engine2: SecondDockerd
) -> None:
    async with hosts.host(host_ids("a")) as (_, eng):
        vm = eng.client().vm.get_or_create(["move-me"])
        await vm.write_file("work.txt", "v1")
        await vm.call("checkpoint", "old")
        await vm.write_file("work.txt", "v2")
        await vm.call("checkpoint", "new")
        await vm.write_file("after.txt", "not in any checkpoint")
        before = await _record(eng, ["move-me"])
    # Host C drives the second engine: the container is not there.
    async with hosts.host(host_ids("c"), docker_host=engine2.address) as (c, eng):
        assert c.engine_id == engine2.engine_id() != before.engine
        vm = eng.client().vm.get(["move-me"])
        assert await vm.read_file("work.txt") == b"v2"  # the newest checkpoint
        result = await vm.exec("ls after.txt")
        assert result["exit_code"] != 0
        after = await _record(eng, ["move-me"])
        assert after.engine == c.engine_id and after.id != before.id
        state = await vm.fetch_state()
        assert state["taken_over"]["checkpoint"] == "new"
        assert state["taken_over"]["from_container"] == before.name
        assert engine2.managed_containers() == [after.name]
        await vm.destroy()
        assert engine2.managed_containers() == []


@SECOND_ENGINE
async def test_other_engine_without_a_checkpoint_is_lost_never_empty(
    hosts: Hosts, host_ids: Callable[[str], str], engine2: SecondDockerd
) -> None:
    async with hosts.host(host_ids("a")) as (_, eng):
        vm = eng.client().vm.get_or_create(["no-save"])
        await vm.write_file("work.txt", "precious")
        before = await _record(eng, ["no-save"])
    async with hosts.host(host_ids("c"), docker_host=engine2.address) as (_, eng):
        vm = eng.client().vm.get(["no-save"])
        with pytest.raises(VmLost) as lost:
            await vm.read_file("work.txt")
        assert lost.value.http_status == 410
        assert (lost.value.group, lost.value.code) == ("vm", "lost")
        assert before.name in lost.value.message and "checkpoint" in lost.value.message
        info = await vm.info()
        assert info["status"] == "lost" and "no workspace checkpoint" in info["lost"]["reason"]
        # Nothing was created on C's engine: no empty home.
        assert engine2.managed_containers() == []
        client = engine2.client()
        assert client.volumes.list(filters={"name": before.volume}) == []
        client.close()
        await vm.destroy()  # a lost vm can still be destroyed


async def test_container_and_volume_gone_is_re_created_from_a_checkpoint_not_empty(
    hosts: Hosts, host_ids: Callable[[str], str]
) -> None:
    """Same engine, but the container and its home volume were removed while the host
    was down: the vm comes back from its checkpoint (not on a new, empty volume)."""
    async with hosts.host(host_ids("a")) as (_, eng):
        vm = eng.client().vm.get_or_create(["wiped"])
        await vm.write_file("work.txt", "saved")
        await vm.call("checkpoint", "c1")
        before = await _record(eng, ["wiped"])
    client = docker_client()
    try:
        client.containers.get(before.id).remove(force=True)
        client.volumes.get(before.volume).remove(force=True)
    finally:
        client.close()
    async with hosts.host(host_ids("b")) as (_, eng):
        vm = eng.client().vm.get(["wiped"])
        assert await vm.read_file("work.txt") == b"saved"
        state = await vm.fetch_state()
        assert state["taken_over"]["checkpoint"] == "c1"
        assert state["sandbox"]["volume"] != before.volume
        await vm.destroy()


async def test_resume_refuses_a_record_of_another_engine(
    hosts: Hosts, host_ids: Callable[[str], str]
) -> None:
    """The guard itself: ``resume`` never creates a volume for a foreign record."""
    async with hosts.host(host_ids("a")) as (a, _):
        foreign = SandboxRecord("agentvm-x-1", "0" * 64, "agentvm-x-1-home", "img", "OTHER:ID")
        with pytest.raises(VmLost):
            await a.resume(foreign, ["k"], a.defaults)
        assert not await a.backend._volume_exists(foreign.volume)
        assert await a.status(foreign) == "lost"


async def test_reaper_removes_dead_hosts_unowned_containers(
    pg_url: str, tmp_path: Path, host_ids: Callable[[str], str], image: str
) -> None:
    """On PostgreSQL, two hosts on this engine: D runs a vm and has a container no vm
    owns (like a pool container). While D lives, L's reaper leaves both alone; once D
    is dead (stopped), L's reaper removes the unowned one and keeps the vm's (a host
    on this engine adopts it when the vm wakes)."""
    hosts = Hosts(pg_url, tmp_path)
    dead, live = host_ids("d"), host_ids("l")
    async with hosts.host(live, lease_ttl=1.0) as (manager, _):
        async with hosts.host(dead, lease_ttl=1.0) as (d, eng_d):
            vm = eng_d.client().vm.get_or_create(["d-vm"])
            await vm.write_file("work.txt", "kept")
            owned = await _record(eng_d, ["d-vm"])
            spec = SandboxSpec(image=image, key=[], limits=LIMITS, pool="p-test")
            orphan = await d.backend.create(spec)
            assert not await _dead(manager, dead)
            removed = await manager.reap()
            assert orphan.name not in removed and owned.name not in removed
        # D stopped (its containers left running, as a dead host leaves them).
        assert await _dead(manager, dead)
        removed = await manager.reap()
        assert orphan.name in removed and orphan.volume in removed
        assert owned.name not in removed and owned.volume not in removed
        client = docker_client()
        try:
            assert client.containers.get(owned.id).status == "running"
            with pytest.raises(docker.errors.NotFound):
                client.containers.get(orphan.id)
        finally:
            client.close()


async def _dead(manager: SandboxManager, host_id: str) -> bool:
    return host_id in await manager._dead_hosts()


@SECOND_ENGINE
async def test_a_vm_is_claimed_by_a_live_host_of_its_engine(
    pg_url: str, tmp_path: Path, host_ids: Callable[[str], str], engine2: SecondDockerd
) -> None:
    """Three hosts on PostgreSQL: A and B on this engine, C on the second. A's vm,
    asleep after A stopped, is not claimed by C (it could only re-create or lose it):
    C's claim names B, the live host of the vm's engine, which adopts the container."""
    from orchestrator.errors import NotOwner

    hosts = Hosts(pg_url, tmp_path)
    url = {"host_url": "http://127.0.0.1:9"}  # in-process hosts: no server is called
    async with (
        hosts.host(host_ids("b"), lease_ttl=1.0, **url) as (_, eng_b),
        hosts.host(host_ids("c"), engine2.address, lease_ttl=1.0, **url) as (_, eng_c),
    ):
        async with hosts.host(host_ids("a"), lease_ttl=1.0, **url) as (_, eng_a):
            vm = eng_a.client().vm.get_or_create(["stay-home"])
            await vm.write_file("work.txt", "here")
            actor_id = await vm.resolve()
            before = await _record(eng_a, ["stay-home"])
        assert eng_c.cluster is not None and eng_b.cluster is not None
        from tests.support import eventually

        b_id = eng_b.cluster.host_id
        await eventually(  # C's view: B alive on the vm's engine, A gone
            lambda: _engines(eng_c),
            lambda e: e.get(b_id) == before.engine and not any(h.endswith("-a") for h in e),
            timeout=30,
        )
        with pytest.raises(NotOwner) as moved:
            await eng_c.cluster.claim(actor_id)
        assert moved.value.metadata["owner_host_id"] == b_id
        # B, on the vm's engine, takes it and adopts the running container.
        vm_b = eng_b.client().vm.get(["stay-home"])
        assert await vm_b.read_file("work.txt") == b"here"
        assert (await _record(eng_b, ["stay-home"])).id == before.id
        await vm_b.destroy()


async def _engines(eng: Engine) -> dict[str, str]:
    assert eng.cluster is not None
    return {h.host_id: h.engine_id for h in eng.cluster.hosts if h.alive}
