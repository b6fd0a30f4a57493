"""Workspace checkpoint, restore and fork of a vm, side by side with ``docker commit``
+ ``docker run`` of a container holding the same files, in one run.

    uv run python bench/checkpoints.py [--quick|--smoke]

The workspace: 5,000 files of 20 KB each (100 MB; ``--quick``: 1,000, 20 MB), random
hex text (so it compresses about 2:1, like source trees and build outputs).

1. **checkpoint** - ``vm.checkpoint(name)``: ``/home/user`` streamed as tar out of the
   sandbox, gzip'd into a file on the host.
2. **restore** - ``vm.restore(name)``: the workspace emptied and extracted back.
3. **fork** - ``vm.fork(new_key, checkpoint=name)`` + the new vm's first ``exec``: a
   container taken from the warm pool (``--pool``, default 2 as ``AGENTVM_WARM_POOL``;
   ``--pool 0``: created cold) and the checkpoint extracted into it.
4. **docker** - the same files in a plain container's own layer (the vm's
   ``/home/user`` is a volume, which ``docker commit`` leaves out, so the Docker side
   gets a container where commit does carry the files): ``container.commit()``, then
   ``containers.run`` of the committed image + first ``exec_run``.

The last line is one JSON object; ``fork_ratio`` = (docker commit + docker run) / our
fork (higher is better for us; target >= 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from typing import Any

from host.vm import SandboxManager, vm_actor
from orchestrator import Engine, setup
from vm_images.builder import ensure_image

HOST_ID = f"benchck{os.getpid()}"

# Writes N files of 20 KB of random hex into DIR, 100 files a directory.
MAKE = """
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "src", f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.txt"), "w") as f:
        f.write(os.urandom(10240).hex())
"""


def secs(t: float) -> float:
    return round(t, 3)


async def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = await fn
    return time.perf_counter() - start, out


async def ours(image: str, files: int, pool: int) -> dict[str, float]:
    tmp = tempfile.TemporaryDirectory(prefix="agentvm-bench-ck-")
    manager = await SandboxManager.open(host_id=HOST_ID, pool_size=pool, reap_interval=None)
    engine = Engine(setup(use={"vm": vm_actor(manager)}), db=f"{tmp.name}/bench.db")
    await engine.start()
    manager.attach(engine)
    try:
        client = engine.client()
        vm = client.vm.get_or_create(["ck-src"])
        made = await vm.exec(["python3", "-c", MAKE, "/home/user", str(files)], timeout=600)
        assert made["exit_code"] == 0, made
        checkpoint_s, entry = await timed(vm.checkpoint("bench"))
        print(f"checkpoint: {checkpoint_s:.2f} s, {entry['raw_size'] / 1e6:.0f} MB tar -> "
              f"{entry['size'] / 1e6:.0f} MB gzip")  # fmt: skip
        await vm.exec(["sh", "-c", "rm -rf /home/user/src/d000"])
        restore_s, _ = await timed(vm.restore("bench"))
        print(f"restore: {restore_s:.2f} s")

        await manager.wait_pool()  # as on a host that was idle a moment (untimed)

        async def fork() -> Any:
            await vm.fork("ck-fork", checkpoint="bench")
            return await client.vm.get(["ck-fork"]).exec(["true"])

        fork_s, _ = await timed(fork())
        print(f"fork (+ first exec): {fork_s:.2f} s")
        count = await client.vm.get(["ck-fork"]).exec(
            ["sh", "-c", "find /home/user/src -type f | wc -l"]
        )
        assert int(count["stdout"]) == files, count
        for key in (["ck-fork"], ["ck-src"]):
            await client.vm.get(key).destroy()
        return {"checkpoint_s": checkpoint_s, "restore_s": restore_s, "fork_s": fork_s}
    finally:
        await engine.stop()
        await manager.close()
        tmp.cleanup()


async def docker_side(image: str, files: int) -> dict[str, float]:
    import docker

    client = docker.from_env()
    labels = {"agentvm.host": HOST_ID}
    run = {"entrypoint": ["sleep", "infinity"], "user": "root", "detach": True, "labels": labels}
    src = await asyncio.to_thread(client.containers.run, image, **run)
    committed = None
    copy = None
    try:
        code, out = await asyncio.to_thread(
            src.exec_run, ["python3", "-c", MAKE, "/bench-ws", str(files)]
        )
        assert code == 0, out
        commit_s, committed = await timed(
            asyncio.to_thread(src.commit, f"agentvm-bench-ck:{HOST_ID}")
        )
        print(f"docker commit: {commit_s:.2f} s")

        async def run_copy() -> Any:
            c = await asyncio.to_thread(client.containers.run, committed.id, **run)
            await asyncio.to_thread(c.exec_run, ["true"])
            return c

        run_s, copy = await timed(run_copy())
        print(f"docker run from the commit (+ first exec): {run_s:.2f} s")
        return {"docker_commit_s": commit_s, "docker_run_from_commit_s": run_s}
    finally:
        for c in (copy, src):
            if c is not None:
                await asyncio.to_thread(c.remove, force=True, v=True)
        if committed is not None:
            await asyncio.to_thread(client.images.remove, committed.id, force=True)
        client.close()


async def main(quick: bool, pool: int, smoke: bool = False) -> dict[str, Any]:
    files = 1000 if quick else 5000
    if smoke:  # does it still run (the test suite): a tiny workspace
        files = 20
    image = await asyncio.to_thread(ensure_image, ["common"])
    figures = await ours(image, files, pool)
    figures.update(await docker_side(image, files))
    docker_total = figures["docker_commit_s"] + figures["docker_run_from_commit_s"]
    result: dict[str, Any] = {
        "files": files, "workspace_mb": files * 20480 / 1e6, "warm_pool": pool, "smoke": smoke
    }  # fmt: skip
    result.update({k: secs(v) for k, v in figures.items()})
    result["fork_ratio"] = round(docker_total / figures["fork_s"], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="checkpoint/fork benchmark")
    parser.add_argument("--quick", action="store_true", help="a 20 MB workspace")
    parser.add_argument("--smoke", action="store_true", help="20 files: does it still run")
    parser.add_argument(
        "--pool", type=int, default=2, help="warm containers (the host's default: 2; 0: cold)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick, args.pool, args.smoke))))
