"""agentvm's sandbox calls side by side with the raw Docker SDK, in one run.

    uv run python bench/sandbox.py [--quick|--smoke]

Both sides use the same running, hardened sandbox container:

1. **exec** - ``sandbox.exec(["true"])`` (the supervisor protocol) vs
   ``container.exec_run(["true"])`` (Docker's exec API); p50 of N calls each.
2. **read_file** - reading a 4 KiB file: ``sandbox.read_file`` vs
   ``container.get_archive`` (+ reading the tar stream to the end); p50.
3. **acquire** - a new vm key to its first command, through the vm actor:
   ``client.vm.get_or_create([new key]).exec(["true"])`` on a real engine (SQLite),
   **warm** (a container from the warm pool; the pool is refilled between samples,
   outside the timing), **cold** (no warm container: one of the cold tier, created
   but not started, is started) and **create** (nothing pooled: the container, its
   volume and disk are created), vs
   ``containers.run`` (same image, same hardening, detached) + first ``exec_run``;
   p50 of a few. ``backend.create`` + first ``exec`` (no actor) is reported too.
4. **idle memory** - the container cgroup's memory usage (``docker stats`` working set:
   usage minus inactive file cache) of an idle sandbox after start-up, and how many
   such sandboxes this machine's RAM would hold.
5. **default vm** - ``default_vm_mib``: the working set of a vm with the host's
   default settings (its default bundles: the coding agent is pre-started), created
   through the vm actor; and 20 such vms: three rounds of an exec on each
   (together) awake, then all put to sleep and woken together, and three rounds
   again: ``awake_exec_p50_ms``, ``wake_exec_p50_ms`` (the rounds after the wake),
   ``wake_ratio`` (target <= 1.5); ``waking_exec_p50_ms`` is the waking exec.

The last line is one JSON object; ratios are "higher is better" for us:
``exec_ratio`` = docker p50 / ours, ``read_ratio`` likewise, ``acquire_warm_ratio``
= docker / ours warm (target >= 10); ``acquire_cold_ratio`` = ours cold / docker
(lower is better, target <= 0.7); ``acquire_create_ratio`` likewise for nothing pooled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from host.app import HostSettings
from host.sandbox import DockerBackend, SandboxSpec
from host.sandbox.docker_backend import hardened_config
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.actions_base import VmVars
from orchestrator import Engine, setup
from vm_images.builder import ensure_image

HOST_ID = f"bench{os.getpid()}"


async def p50_async(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def p50_sync(fn: Callable[[], Any], n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def acquire_docker(backend: DockerBackend, image: str, i: int) -> float:
    """containers.run (same hardening, our entrypoint) + first exec_run, then remove."""
    client = backend.client
    name = f"agentvm-{HOST_ID}-raw{i}"
    control = Path("/tmp") / f"agentvm-bench-raw{i}"
    control.mkdir(exist_ok=True)
    config = hardened_config(
        SandboxSpec(image=image), name=name, volume=f"{name}-home",
        control_dir=control, token="unused", labels={"agentvm.host": HOST_ID},
    )  # fmt: skip
    config["entrypoint"] = ["sleep", "infinity"]  # no supervisor: raw Docker only
    start = time.perf_counter()
    container = await asyncio.to_thread(client.containers.run, **config)
    await asyncio.to_thread(container.exec_run, ["true"])
    elapsed = time.perf_counter() - start
    await asyncio.to_thread(container.remove, force=True)
    volume = await asyncio.to_thread(client.volumes.get, f"{name}-home")
    await asyncio.to_thread(volume.remove, force=True)
    control.rmdir()
    return elapsed


async def acquire_backend(backend: DockerBackend, image: str) -> float:
    """backend.create + first exec (the sandbox layer alone, no actor)."""
    start = time.perf_counter()
    sandbox = await backend.create(SandboxSpec(image=image))
    await sandbox.exec(["true"])
    elapsed = time.perf_counter() - start
    await backend.remove(sandbox)
    return elapsed


class VmBench:
    """A SandboxManager and an engine running the vm actor on a temporary database."""

    def __init__(self, *, warm: bool, cold_pool: int = 0) -> None:
        self.warm = warm
        self.cold_pool = cold_pool  # created, not started containers (the cold tier)
        self.count = 0

    async def __aenter__(self) -> VmBench:
        self.tmp = tempfile.TemporaryDirectory(prefix="agentvm-bench-")
        self.manager = await SandboxManager.open(
            host_id=f"{HOST_ID}{'w' if self.warm else 'c'}{self.cold_pool}",
            pool_size=1 if self.warm else 0,
            cold_pool=self.cold_pool,
            reap_interval=None,
        )
        registry = setup(use={"vm": vm_actor(self.manager)})
        self.engine = Engine(registry, db=f"{self.tmp.name}/bench.db")
        await self.engine.start()
        await self.once()  # warm the code paths (and build/cache the image tag)
        return self

    async def once(self) -> float:
        """A new vm key to its first exec; the vm is destroyed afterwards (untimed)."""
        await self.manager.wait_pool()  # the refill happens outside the timing
        await self.manager.cold.wait_full(self.manager.defaults)
        self.count += 1
        start = time.perf_counter()
        vm = self.engine.client().vm.get_or_create([f"bench-{self.count}"])
        await vm.exec(["true"])
        elapsed = time.perf_counter() - start
        await vm.destroy()
        return elapsed

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()
        await self.manager.close()
        self.tmp.cleanup()


async def idle_memory(backend: DockerBackend, image: str) -> dict[str, float]:
    sandbox = await backend.create(SandboxSpec(image=image))
    try:
        await sandbox.exec(["true"])
        # Let start-up settle: sample until two readings agree (bounded).
        last = -1
        usage: dict[str, int] = {}
        for _ in range(10):
            usage = await backend.memory_usage(sandbox)
            if usage["working_set"] == last:
                break
            last = usage["working_set"]
        return {k: round(v / 2**20, 2) for k, v in usage.items()}
    finally:
        await backend.remove(sandbox)


async def default_vms(n_vms: int, rounds: int) -> dict[str, float]:
    """``n_vms`` vms with the host's default settings (its default bundles, so the
    coding agent is pre-started) through the vm actor on a real engine:
    ``default_vm_mib``, one vm's container working set once settled (supervisor +
    what is pre-started); then ``rounds`` of an exec on each vm (together) awake,
    and after all were put to sleep (as their idle timeout would) and woken
    together: p50 of every exec's round trip (engine client, in process)."""
    tmp = tempfile.TemporaryDirectory(prefix="agentvm-bench-")
    defaults = VmOptions(bundles=HostSettings().vm_bundles)
    manager = await SandboxManager.open(
        host_id=f"{HOST_ID}d", pool_size=0, reap_interval=None, defaults=defaults
    )
    engine = Engine(setup(use={"vm": vm_actor(manager)}), db=f"{tmp.name}/bench.db")
    await engine.start()
    try:
        client = engine.client()
        vms = [client.vm.get_or_create([f"default-{i}"]) for i in range(n_vms)]
        for vm in vms:  # one at a time: n containers starting at once is not the point
            await vm.exec(["true"])
        ids = {a.actor_id for a in await engine.list_actors("vm")}

        def vars_of(aid: str) -> VmVars:
            v = engine.instances[aid].vars
            assert isinstance(v, VmVars)
            return v

        for aid in ids:
            sessions = vars_of(aid).sessions.manager
            if sessions is not None:
                await sessions.wait_prestarted()
        sandbox = vars_of(sorted(ids)[0]).sandbox
        assert sandbox is not None
        last, usage = -1, {}
        for _ in range(20):  # settled: two readings agree (bounded)
            usage = await manager.backend.memory_usage(sandbox)
            if usage["working_set"] == last:
                break
            last = usage["working_set"]
            await asyncio.sleep(0.5)

        async def timed(vm: Any) -> float:
            start = time.perf_counter()
            await vm.exec(["true"])
            return time.perf_counter() - start

        async def sleep_all() -> None:
            for _ in range(1000):  # bounded: an actor busy right now sleeps next time
                awake = [engine.instances[a] for a in ids if a in engine.instances]
                if not awake:
                    return
                for inst in awake:
                    engine.request_sleep(inst)
                await asyncio.sleep(0.01)
            raise RuntimeError("the vms did not fall asleep")

        # Rounds of an exec on each vm (together), awake; then all put to sleep and
        # woken together (the waking exec timed apart), and the same rounds again:
        # work a wake redoes (e.g. starting agents) slows the rounds after it.
        awake_s: list[float] = []
        for _ in range(rounds):
            awake_s += await asyncio.gather(*(timed(vm) for vm in vms))
        await sleep_all()
        waking_s = await asyncio.gather(*(timed(vm) for vm in vms))
        wake_s: list[float] = []
        for _ in range(rounds):
            wake_s += await asyncio.gather(*(timed(vm) for vm in vms))
        for vm in vms:
            await vm.destroy()
    finally:
        await engine.stop()
        await manager.close()
        tmp.cleanup()
    awake, wake = statistics.median(awake_s), statistics.median(wake_s)
    return {
        "default_vm_mib": round(usage["working_set"] / 2**20, 2),
        "awake_exec_p50_ms": ms(awake),
        "wake_exec_p50_ms": ms(wake),
        "wake_exec_max_ms": ms(max(wake_s)),
        "waking_exec_p50_ms": ms(statistics.median(waking_s)),
        "wake_ratio": round(wake / awake, 2),
    }


def total_memory_mib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main(quick: bool, smoke: bool = False) -> dict[str, Any]:
    n_exec = 40 if quick else 200
    n_docker = 20 if quick else 100
    n_acquire = 5 if quick else 15
    if smoke:  # does it still run (the test suite): a few samples of each
        n_exec, n_docker, n_acquire = 3, 2, 1
    image = await asyncio.to_thread(ensure_image, ["common"])
    backend = await DockerBackend.connect(HOST_ID)
    try:
        sandbox = await backend.create(SandboxSpec(image=image))
        container = await asyncio.to_thread(backend.client.containers.get, sandbox.id)
        await sandbox.write_file("bench-4k.bin", os.urandom(4096))

        ours_exec = await p50_async(lambda: sandbox.exec(["true"]), n_exec)
        docker_exec = p50_sync(lambda: container.exec_run(["true"]), n_docker)
        print(f"exec p50: ours {ms(ours_exec)} ms, docker exec_run {ms(docker_exec)} ms")

        ours_read = await p50_async(lambda: sandbox.read_file("bench-4k.bin"), n_exec)

        def get_archive() -> bytes:
            stream, _ = container.get_archive("/home/user/bench-4k.bin")
            return b"".join(stream)

        docker_read = p50_sync(get_archive, n_docker)
        print(f"read 4 KiB p50: ours {ms(ours_read)} ms, docker get_archive {ms(docker_read)} ms")
        await backend.remove(sandbox)

        # Interleaved rounds, so the machine's load changes hit every side alike.
        docker_s: list[float] = []
        backend_s: list[float] = []
        cold_s: list[float] = []
        create_s: list[float] = []
        async with VmBench(warm=False, cold_pool=1) as cold, VmBench(warm=False) as create:
            for i in range(n_acquire):
                docker_s.append(await acquire_docker(backend, image, i))
                backend_s.append(await acquire_backend(backend, image))
                cold_s.append(await cold.once())
                create_s.append(await create.once())
        async with VmBench(warm=True) as warm:
            warm_s = [await warm.once() for _ in range(n_acquire)]
        docker_acq, ours_acq = statistics.median(docker_s), statistics.median(backend_s)
        vm_cold, vm_warm = statistics.median(cold_s), statistics.median(warm_s)
        vm_create = statistics.median(create_s)
        print(
            f"new vm key to first exec p50: warm pool {ms(vm_warm)} ms, "
            f"cold tier {ms(vm_cold)} ms, nothing pooled {ms(vm_create)} ms, "
            f"backend.create+exec {ms(ours_acq)} ms, docker run+exec {ms(docker_acq)} ms"
        )

        idle = await idle_memory(backend, image)
        capacity = int(total_memory_mib() // max(idle["working_set"], 1))
        print(f"idle sandbox memory: {idle} MiB; ~{capacity} idle sandboxes fit in RAM")
        default = await default_vms(2 if smoke else 20, 1 if smoke else 3)
        print(
            f"default vm (supervisor + pre-started agent): {default['default_vm_mib']} MiB; "
            f"exec p50 awake {default['awake_exec_p50_ms']} ms, woken together "
            f"{default['wake_exec_p50_ms']} ms (ratio {default['wake_ratio']})"
        )
    finally:
        for info in await backend.list_sandboxes():
            await backend.remove(info.id)
        await backend.close()
    return {
        "quick": quick,
        "smoke": smoke,
        "ours_exec_p50_ms": ms(ours_exec),
        "docker_exec_run_p50_ms": ms(docker_exec),
        "exec_ratio": round(docker_exec / ours_exec, 1),
        "ours_read_4k_p50_ms": ms(ours_read),
        "docker_get_archive_p50_ms": ms(docker_read),
        "read_ratio": round(docker_read / ours_read, 1),
        "ours_acquire_warm_p50_ms": ms(vm_warm),
        "ours_acquire_cold_p50_ms": ms(vm_cold),
        "acquire_cold_ms": ms(vm_cold),
        "acquire_create_ms": ms(vm_create),
        "ours_backend_create_exec_p50_ms": ms(ours_acq),
        "docker_run_exec_p50_ms": ms(docker_acq),
        "acquire_warm_ratio": round(docker_acq / vm_warm, 1),
        "acquire_cold_ratio": round(vm_cold / docker_acq, 2),
        "acquire_create_ratio": round(vm_create / docker_acq, 2),
        "idle_sandbox_mib": idle["working_set"],
        "idle_sandbox_usage_mib": idle["usage"],
        "idle_sandboxes_in_ram": capacity,
        **default,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="sandbox benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples, under a minute")
    parser.add_argument("--smoke", action="store_true", help="a few samples: does it still run")
    args = parser.parse_args()
    figures = asyncio.run(main(args.quick, args.smoke))
    print(json.dumps(figures))
