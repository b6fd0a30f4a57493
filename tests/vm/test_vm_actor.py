"""The vm actor against real containers and a real SQLite engine."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
from collections.abc import Callable
from typing import Any

import docker
import pytest

from host.sandbox import (
    DockerBackend,
    DockerUnavailable,
    FileNotFoundInSandbox,
    SandboxLost,
    SandboxSpec,
)
from host.sandbox.backend import LABEL_HOST, LABEL_KEY, LABEL_MANAGED, LABEL_POOL
from host.vm import SandboxManager, VmOptions, vm_actor
from orchestrator import Loop, actor, queue, setup, workflow
from orchestrator.errors import InvalidRequest
from tests.support import eventually

from .conftest import HOST_ID, OTHER_HOST_ID, TEST_LIMITS

pytestmark = pytest.mark.docker

VmHostFactory = Callable[..., Any]


async def _events(sub: Any, until: Callable[[list[Any]], bool]) -> list[Any]:
    seen: list[Any] = []
    while not until(seen):
        seen.append(await sub.next(20))
    return seen


async def test_lazy_creation_one_container_per_key(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["lazy", "a"])
        assert await vm.info() == {**(await vm.info()), "container": None, "running": False}
        assert await h.manager.backend.list_sandboxes() == []

        # Concurrent first calls share one container.
        results = await asyncio.gather(*(vm.exec("echo $HOSTNAME") for _ in range(4)))
        assert {r["exit_code"] for r in results} == {0}
        infos = await h.manager.backend.list_sandboxes()
        assert len(infos) == 1
        assert infos[0].key == ["lazy", "a"] and infos[0].pool is None
        record = await h.record(["lazy", "a"])
        assert record.id == infos[0].id and record.volume == infos[0].volume

        await vm.exec("true")
        other = h.client.vm.get_or_create(["lazy", "b"])
        await other.exec("true")
        infos = await h.manager.backend.list_sandboxes()
        assert sorted(json.dumps(i.key) for i in infos) == ['["lazy", "a"]', '["lazy", "b"]']
        assert (await h.record(["lazy", "a"])).id == record.id


async def test_exec(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["exec"])
        res = await vm.exec("echo out; echo err >&2; exit 3")
        assert res == {
            "exit_code": 3,
            "stdout": "out\n",
            "stderr": "err\n",
            "timed_out": False,
            "truncated": False,
        }
        await vm.mkdir("work/sub")
        assert (await vm.exec(["pwd"], cwd="work/sub"))["stdout"] == "/home/user/work/sub\n"
        assert (await vm.exec("echo $GREETING", env={"GREETING": "hi"}))["stdout"] == "hi\n"
        assert (await vm.exec(["cat"], stdin="piped"))["stdout"] == "piped"
        missing = await vm.exec(["no-such-binary-here"])
        assert missing["exit_code"] == 127 and "no-such-binary-here" in missing["stderr"]
        slow = await vm.exec("sleep 30", timeout=0.5)
        assert slow["timed_out"] is True
        big = await vm.exec("head -c 100000 /dev/zero", max_output=1000)
        assert big["truncated"] is True and len(big["stdout"]) == 1000


async def test_files(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["files"])
        await vm.write_file("a/b/text.txt", "héllo", parents=True)
        await vm.write_file("/tmp/bin.dat", bytes(range(256)), mode=0o600)
        assert await vm.read_file("a/b/text.txt") == "héllo".encode()
        assert await vm.read_file("/tmp/bin.dat") == bytes(range(256))
        assert (await vm.stat("/tmp/bin.dat"))["mode"] & 0o777 == 0o600
        await vm.write_files({"m/1.txt": "one", "m/2.txt": b"two"})
        assert await vm.read_files(["m/1.txt", "m/2.txt"]) == {
            "m/1.txt": b"one",
            "m/2.txt": b"two",
        }
        assert [e["name"] for e in await vm.readdir("m")] == ["1.txt", "2.txt"]
        names = {e["name"] for e in await vm.readdir_recursive("a")}
        assert names == {"b", "b/text.txt"}
        stat = await vm.stat("a/b/text.txt")
        assert stat["type"] == "file" and stat["size"] == len("héllo".encode())
        assert await vm.exists("a/b") is True and await vm.exists("nope") is False
        await vm.mkdir("d1/d2")
        await vm.move("m/1.txt", "d1/d2/moved.txt")
        assert await vm.exists("m/1.txt") is False
        assert await vm.read_file("d1/d2/moved.txt") == b"one"
        await vm.delete_file("d1", recursive=True)
        assert await vm.exists("d1") is False

        # Directory trees as tar bytes, both ways.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            data = b"print('hi')\n"
            member = tarfile.TarInfo("pkg/main.py")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        await vm.upload_dir("project", buf.getvalue())
        assert await vm.read_file("project/pkg/main.py") == b"print('hi')\n"
        archive = await vm.download_dir("project")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            assert "pkg/main.py" in {m.name.lstrip("./") for m in tar.getmembers()}

        # A missing path: a not-found error naming it, and no state change.
        before = await vm.fetch_state()
        with pytest.raises(FileNotFoundInSandbox) as info:
            await vm.read_file("missing/file.txt")
        assert info.value.path == "/home/user/missing/file.txt"
        assert "missing/file.txt" in info.value.message
        assert info.value.to_dict()["code"] == "file_not_found"
        assert info.value.http_status == 404
        assert await vm.fetch_state() == before


async def test_spawn_events_and_processes(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["procs"])
        sub = await vm.connect()
        try:
            pid = (await vm.spawn(["cat"]))["pid"]
            await vm.write_stdin(pid, "line one\n")
            got = await _events(sub, lambda seen: any("line one" in str(e.payload) for e in seen))
            assert got[-1].name == "process_output"
            assert got[-1].payload == {"pid": pid, "stream": "stdout", "data": "line one\n"}
            running = {p["pid"]: p for p in await vm.list_processes()}
            assert running[pid]["running"] is True and running[pid]["argv"] == ["cat"]
            await vm.close_stdin(pid)
            assert await vm.wait_process(pid, timeout=10) == 0
            got = await _events(sub, lambda seen: any(e.name == "process_exit" for e in seen))
            assert got[-1].payload == {"pid": pid, "exit_code": 0}

            # Bytes that are not UTF-8 come with their exact base64.
            pid = (await vm.spawn("printf '\\377\\376ok'"))["pid"]
            got = await _events(sub, lambda seen: any(e.name == "process_exit" for e in seen))
            out = [e.payload for e in got if e.name == "process_output"]
            assert b"".join(base64.b64decode(p.get("data_b64", "")) for p in out) == b"\xff\xfeok"

            pid = (await vm.spawn("sleep 300"))["pid"]
            await vm.kill_process(pid, signal="TERM")
            got = await _events(sub, lambda seen: any(e.name == "process_exit" for e in seen))
            assert got[-1].payload == {"pid": pid, "exit_code": 128 + 15}
        finally:
            await sub.close()


async def test_spawned_process_keeps_the_vm_awake(vm_host: VmHostFactory) -> None:
    async with vm_host(idle_timeout=0.3) as h:
        busy = h.client.vm.get_or_create(["busy"])
        idle = h.client.vm.get_or_create(["idle"])
        pid = (await busy.spawn(["cat"]))["pid"]
        await idle.exec("true")
        # The idle vm is the clock: once it slept and stopped, the busy one had the
        # same chance but holds on while its process runs.
        await eventually(lambda: h.status(["idle"]), lambda s: s == "exited", what="idle stop")
        assert await h.status(["busy"]) == "running"
        busy_id = (await h.record(["busy"])).id
        assert any(i.actor_id for i in await h.engine.list_actors("vm") if i.awake)
        await busy.close_stdin(pid)
        await eventually(lambda: h.status(["busy"]), lambda s: s == "exited", what="busy stop")
        assert (await h.record(["busy"])).id == busy_id


async def test_idle_stop_keeps_home_and_next_call_restarts(vm_host: VmHostFactory) -> None:
    async with vm_host(idle_timeout=0.3) as h:
        vm = h.client.vm.get_or_create(["sleepy"])
        await vm.write_file("keep.txt", "still here")
        record = await h.record(["sleepy"])
        await eventually(lambda: h.status(["sleepy"]), lambda s: s == "exited", what="idle stop")
        assert record.volume in await h.manager.backend.list_volumes()
        assert await vm.read_file("keep.txt") == b"still here"
        assert await h.status(["sleepy"]) == "running"
        assert (await h.record(["sleepy"])).id == record.id


async def test_a_longer_idle_timeout_of_one_vm_is_kept(vm_host: VmHostFactory) -> None:
    async with vm_host(idle_timeout=0.3) as h:
        patient = h.client.vm.get_or_create(["patient"], input={"idle_timeout": 5})
        quick = h.client.vm.get_or_create(["quick"])
        await patient.exec("true")
        await quick.exec("true")
        # Both actors sleep after 0.3 s; only the quick vm's container stops then.
        await eventually(lambda: h.status(["quick"]), lambda s: s == "exited", what="quick stop")
        assert await h.status(["patient"]) == "running"
        state = await patient.fetch_state()
        assert state["idle_schedule"] is not None  # a durable wake-up for the remainder
        await eventually(
            lambda: h.status(["patient"]), lambda s: s == "exited", timeout=30, what="late stop"
        )


async def test_idle_stop_fires_after_a_restart(vm_host: VmHostFactory) -> None:
    async with vm_host(idle_timeout=2) as h:
        await h.client.vm.get_or_create(["restarted"]).exec("true")
    # The engine stopped with the vm running; the next host stops it when idle.
    async with vm_host(idle_timeout=2) as h2:
        await eventually(
            lambda: h2.status(["restarted"]), lambda s: s == "exited", timeout=30, what="stop"
        )


async def test_adoption_after_host_restart(vm_host: VmHostFactory, docker_client: Any) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["adopt"])
        await vm.write_file("notes.txt", "before restart")
        pid = (await vm.spawn(["cat"]))["pid"]
        record = await h.record(["adopt"])
    started_at = docker_client.api.inspect_container(record.id)["State"]["StartedAt"]
    # A new manager and engine on the same database: the container is adopted.
    async with vm_host() as h2:
        vm = h2.client.vm.get_or_create(["adopt"])
        assert await vm.read_file("notes.txt") == b"before restart"
        assert (await h2.record(["adopt"])).id == record.id
        attrs = docker_client.api.inspect_container(record.id)
        assert attrs["State"]["StartedAt"] == started_at  # not restarted, not recreated
        assert [i.id for i in await h2.manager.backend.list_sandboxes()] == [record.id]
        procs = {p["pid"]: p for p in await vm.list_processes()}
        assert procs[pid]["running"] is True
        # The process is followed again: its exit is broadcast.
        sub = await vm.connect(["process_exit"])
        await vm.close_stdin(pid)
        event = await sub.next(20)
        assert event.payload == {"pid": pid, "exit_code": 0}
        await sub.close()


async def test_destroy_removes_container_and_volume(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["doomed"])
        await vm.exec("true")
        record = await h.record(["doomed"])
        await vm.destroy()
        assert await h.manager.status(record) == "missing"
        assert record.volume not in await h.manager.backend.list_volumes()
        assert await h.engine.list_actors("vm") == []


async def test_reaper_removes_only_this_hosts_orphans(
    vm_host: VmHostFactory, image: str, docker_client: docker.DockerClient
) -> None:
    async with vm_host() as h:
        assert h.manager._reaper is not None
        await h.manager._reaper  # the start-up pass is done
        owned = h.client.vm.get_or_create(["owned"])
        await owned.exec("true")
        orphan = await h.manager.backend.create(SandboxSpec(image=image, key=["gone"]))
        stray = docker_client.volumes.create(
            f"agentvm-{HOST_ID}-stray", labels={LABEL_MANAGED: "1", LABEL_HOST: HOST_ID}
        )
        other_backend = await DockerBackend.connect(OTHER_HOST_ID)
        try:
            foreign = await other_backend.create(SandboxSpec(image=image, key=["x"]))
            removed = await h.manager.reap()
            assert set(removed) == {orphan.name, orphan.volume, stray.name}
            names = {i.name for i in await h.manager.backend.list_sandboxes(all_hosts=True)}
            assert (await h.record(["owned"])).name in names
            assert foreign.name in names and orphan.name not in names
            assert orphan.volume not in await h.manager.backend.list_volumes()
            assert (await owned.exec("echo ok"))["stdout"] == "ok\n"
        finally:
            await other_backend.remove(foreign)
            await other_backend.close()


async def test_warm_pool_serves_a_new_key_and_refills(vm_host: VmHostFactory) -> None:
    async with vm_host(pool_size=1) as h:
        m = h.manager
        await eventually(lambda: _ready(m), lambda n: n == 1, timeout=60, what="pool filled")
        (pooled,) = m.pool_names()
        vm = h.client.vm.get_or_create(["pooled"])
        assert (await vm.exec("echo warm"))["stdout"] == "warm\n"
        record = await h.record(["pooled"])
        assert record.name == pooled
        info = await m.backend.inspect(record.id)
        # Labels cannot change: pool membership stays, the key lives in the store.
        assert info.labels[LABEL_POOL] == m.defaults.pool_id() and info.labels[LABEL_KEY] == "[]"
        await eventually(lambda: _ready(m), lambda n: n == 1, timeout=60, what="pool refilled")
        assert m.pool_names() != {pooled}

        # Other options do not match the pool's: a container of their own.
        other = h.client.vm.get_or_create(["bridged"], input={"network": "bridge"})
        await other.exec("true")
        assert (await h.record(["bridged"])).name not in {pooled, *m.pool_names()}
        assert (await m.backend.inspect((await h.record(["bridged"])).id)).pool is None


async def _ready(manager: SandboxManager) -> int:
    return manager.pool_ready()


async def test_sandbox_lost_then_recovery(vm_host: VmHostFactory, docker_client: Any) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["fragile"])
        await vm.write_file("work.txt", "precious")
        record = await h.record(["fragile"])
        state = await vm.fetch_state()

        call = asyncio.create_task(vm.exec("sleep 60"))
        await eventually(
            lambda: vm.exec("pgrep -x sleep"), lambda r: r["exit_code"] == 0, what="sleeping"
        )
        container = docker_client.containers.get(record.id)
        await asyncio.to_thread(container.kill)
        with pytest.raises(SandboxLost) as info:
            await call
        assert info.value.http_status == 503
        assert await vm.fetch_state() == state
        # The next call brings it back (same container, workspace intact).
        assert await vm.read_file("work.txt") == b"precious"
        assert (await h.record(["fragile"])).id == record.id

        # Gone altogether: recreated on the same volume.
        # (In a thread, as the host does: the event loop sees the link close meanwhile.)
        await asyncio.to_thread(container.remove, force=True)
        assert await vm.read_file("work.txt") == b"precious"
        new = await h.record(["fragile"])
        assert new.id != record.id and new.volume == record.volume
        assert [i.id for i in await h.manager.backend.list_sandboxes()] == [new.id]


async def test_docker_down_names_the_engine_address(
    vm_host: VmHostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = "tcp://127.0.0.1:9"
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["nodocker"])
        monkeypatch.setenv("DOCKER_HOST", bogus)
        real = h.manager.backend.client
        h.manager.backend.client = docker.DockerClient(base_url=bogus, version="1.41", timeout=5)
        try:
            with pytest.raises(DockerUnavailable) as info:
                await vm.exec("true")
        finally:
            h.manager.backend.client.close()
            h.manager.backend.client = real
        assert bogus in str(info.value) and info.value.metadata["address"] == bogus
        assert info.value.http_status == 503
        assert (await vm.fetch_state())["sandbox"] is None
        monkeypatch.delenv("DOCKER_HOST")
        assert (await vm.exec("echo back"))["stdout"] == "back\n"

    monkeypatch.setenv("DOCKER_HOST", bogus)
    with pytest.raises(DockerUnavailable, match=r"127\.0\.0\.1:9"):
        await SandboxManager.open(host_id=HOST_ID, pool_size=0)


async def test_bad_options_are_invalid_requests(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        with pytest.raises(InvalidRequest) as info:
            await h.client.vm.get_or_create(["bad"], input={"network": "wifi"}).exec("true")
        assert info.value.metadata["field"] == "network"
        with pytest.raises(InvalidRequest) as info:
            await h.client.vm.get_or_create(["bad"], input={"limits": {"memory_mb": 1}}).info()
        assert info.value.metadata["field"] == "limits.memory_mb"
        with pytest.raises(InvalidRequest) as info:
            await h.client.vm.get_or_create(["bad"], input={"colour": "red"}).info()
        assert info.value.metadata["field"] == "colour"
        assert await h.engine.list_actors("vm") == []

        vm = h.client.vm.get_or_create(["good"], input={"env": {"MODE": "x"}})
        with pytest.raises(InvalidRequest) as info:
            await vm.exec("true", cwdd="/tmp")
        assert info.value.metadata["field"] == "cwdd"
        with pytest.raises(InvalidRequest) as info:
            await vm.exec(42)
        assert info.value.metadata["field"] == "command"
        assert await h.manager.backend.list_sandboxes() == []  # nothing started
        assert (await vm.exec("echo $MODE"))["stdout"] == "x\n"
        assert (await vm.info())["options"]["env"] == {"MODE": "x"}
        assert VmOptions.model_validate((await vm.info())["options"]).limits.memory_mb == 256


async def test_sandbox_for_streams_in_process(vm_host: VmHostFactory) -> None:
    async with vm_host() as h:
        async with h.manager.sandbox_for(h.engine, ["stream"]) as sandbox:
            await sandbox.write_file("big.bin", b"x" * (3 * 2**20))
            total = 0
            async for chunk in sandbox.read_file_stream("big.bin"):
                total += len(chunk)
            assert total == 3 * 2**20
        assert (await h.client.vm.get_or_create(["stream"]).stat("big.bin"))["size"] == total


async def test_a_workflow_drives_a_vm_in_steps(make_engine: Any, image: str) -> None:
    """The seed's pattern: an orchestrator's steps call the vm actor."""

    async def run(ctx: Any) -> None:
        async def body(loop_ctx: Any) -> Any:
            msg = await loop_ctx.queue.next("wait", names=["jobs"], completable=True)
            vm = loop_ctx.client().vm.get_or_create([f"job-{msg.body['id']}"])
            await loop_ctx.step("write", lambda: vm.write_file("in.txt", msg.body["text"]))
            tests = await loop_ctx.step("run", lambda: vm.exec("tr a-z A-Z < in.txt"))

            async def read() -> str:
                return (await vm.read_file("in.txt")).decode()

            original = await loop_ctx.step("read", read)
            await msg.complete(
                {"exit_code": tests["exit_code"], "out": tests["stdout"], "in": original}
            )
            return Loop.continue_()

        await ctx.loop("jobs", body)

    orchestrator_actor = actor(queues={"jobs": queue()}, run=workflow(run))
    manager = await SandboxManager.open(
        host_id=HOST_ID, pool_size=0, defaults=VmOptions(limits=TEST_LIMITS), reap_interval=None
    )
    try:
        registry = setup(use={"vm": vm_actor(manager), "automator": orchestrator_actor})
        async with make_engine(registry) as engine:
            handle = engine.client().automator.get_or_create("main")
            result = await handle.send("jobs", {"id": 7, "text": "abc"}, wait=True, timeout=60)
            assert result.status == "completed"
            assert result.response == {"exit_code": 0, "out": "ABC", "in": "abc"}
    finally:
        await manager.close()
