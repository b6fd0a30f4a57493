"""agentvm's sandbox calls side by side with the raw Docker SDK, in one run.

    uv run python bench/sandbox.py [--quick]

Both sides use the same running, hardened sandbox container:

1. **exec** - ``sandbox.exec(["true"])`` (the supervisor protocol) vs
   ``container.exec_run(["true"])`` (Docker's exec API); p50 of N calls each.
2. **read_file** - reading a 4 KiB file: ``sandbox.read_file`` vs
   ``container.get_archive`` (+ reading the tar stream to the end); p50.
3. **acquire (cold)** - a new sandbox to its first command: ``backend.create`` + first
   ``exec`` vs ``containers.run`` (same image, same hardening, detached) + first
   ``exec_run``; p50 of a few. The warm-pool variant needs the vm actor's pool and
   is reported as ``null`` here.
4. **idle memory** - the container cgroup's memory usage (``docker stats`` working set:
   usage minus inactive file cache) of an idle sandbox after start-up, and how many
   such sandboxes this machine's RAM would hold.

The last line is one JSON object; ratios are "higher is better" for us:
``exec_ratio`` = docker p50 / ours, ``read_ratio`` likewise, ``acquire_cold_ratio`` =
ours / docker (lower is better, target <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from host.sandbox import DockerBackend, SandboxSpec
from host.sandbox.docker_backend import hardened_config
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


async def acquire_docker(backend: DockerBackend, image: str, n: int) -> float:
    """containers.run (same hardening, our entrypoint) + first exec_run, then remove."""
    client = backend.client
    samples = []
    for i in range(n):
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
        samples.append(time.perf_counter() - start)
        await asyncio.to_thread(container.remove, force=True)
        volume = await asyncio.to_thread(client.volumes.get, f"{name}-home")
        await asyncio.to_thread(volume.remove, force=True)
    return statistics.median(samples)


async def acquire_ours(backend: DockerBackend, image: str, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        sandbox = await backend.create(SandboxSpec(image=image))
        await sandbox.exec(["true"])
        samples.append(time.perf_counter() - start)
        await backend.remove(sandbox)
    return statistics.median(samples)


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


def total_memory_mib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main(quick: bool) -> dict[str, Any]:
    n_exec = 40 if quick else 200
    n_docker = 20 if quick else 100
    n_acquire = 3 if quick else 10
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

        ours_acq = await acquire_ours(backend, image, n_acquire)
        docker_acq = await acquire_docker(backend, image, n_acquire)
        print(f"acquire cold p50: ours {ms(ours_acq)} ms, docker run+exec {ms(docker_acq)} ms")

        idle = await idle_memory(backend, image)
        capacity = int(total_memory_mib() // max(idle["working_set"], 1))
        print(f"idle sandbox memory: {idle} MiB; ~{capacity} idle sandboxes fit in RAM")
    finally:
        for info in await backend.list_sandboxes():
            await backend.remove(info.id)
        await backend.close()
    return {
        "quick": quick,
        "ours_exec_p50_ms": ms(ours_exec),
        "docker_exec_run_p50_ms": ms(docker_exec),
        "exec_ratio": round(docker_exec / ours_exec, 1),
        "ours_read_4k_p50_ms": ms(ours_read),
        "docker_get_archive_p50_ms": ms(docker_read),
        "read_ratio": round(docker_read / ours_read, 1),
        "ours_acquire_cold_p50_ms": ms(ours_acq),
        "docker_run_exec_p50_ms": ms(docker_acq),
        "acquire_cold_ratio": round(ours_acq / docker_acq, 2),
        "acquire_warm_ratio": None,
        "idle_sandbox_mib": idle["working_set"],
        "idle_sandbox_usage_mib": idle["usage"],
        "idle_sandboxes_in_ram": capacity,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="sandbox benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples, under a minute")
    figures = asyncio.run(main(parser.parse_args().quick))
    print(json.dumps(figures))
