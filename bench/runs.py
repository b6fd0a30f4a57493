"""fixBug runs side by side vs one after another.

    uv run python bench/runs.py [--quick|--smoke] [--runs N] [--latency L]

One real host (``host_runtime``: SQLite engine, Docker sandboxes with the coding
agent, warm pool of N containers, the LLM gateway) in this process; the fake
Anthropic server (tests/support/fake_anthropic.py) in a child process, answering
every Messages call after a fixed latency L. Each ``fixBug`` run clones a small
buggy repository into its own vm, lets the agent fix it (two model calls: an edit,
then a final text), runs the tests, makes the patch and destroys its vm (the container's
removal runs after the answer).

1. **concurrent**: N runs sent at once to ``automator/main`` (run concurrency N),
   until all completed.
2. **serial**: the same N runs one after another (each sent with ``wait``).

Before each phase the warm pool is refilled, its containers' agents pre-started
and idle (outside the timing). The last line is one JSON object: ``runs``,
``model_latency_s``, ``concurrent_s``, ``serial_s``, ``speedup`` (serial /
concurrent) and ``overhead_per_run_s`` (the median wall time of a serial run minus
its model time: model calls x L). Targets: N=8 and concurrency 8: ``speedup`` >= 6,
``overhead_per_run_s`` <= 0.5.

CPU figures, to tell whether the machine can reach the targets: ``cpus``;
``*_cpu_busy_s``, the CPU seconds the whole machine spent busy during a phase
(/proc/stat: other processes' too); ``*_cpu_per_run_s``, that divided by N;
``vm_cpu_per_run_s``, the median CPU one run's container used (its cgroup, from
the vm taking it to its destroy); ``host_cpu_per_run_s``, this process's CPU (the
engine, gateway, session manager) in the concurrent phase over N;
``loadavg_start``; ``serial_step_median_s``, where a serial run's time goes (each
workflow step's median seconds, ``fix-bug`` with its model calls, and
``after-last-step``: the vm's destroy and the answer; a completed run's container
and volume are removed in the background, after the answer). A phase cannot take less than
busy CPU / cpus: N runs at once fit in the model time only if N x CPU per run
stays under cpus x model time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host.app import HostSettings, build_registry, host_runtime  # noqa: E402
from orchestrator import EngineConfig  # noqa: E402
from tests.support.docker import docker_client, remove_host  # noqa: E402

HOST_ID = f"bench-runs{os.getpid()}"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_busy_s() -> float:
    """CPU seconds the machine spent busy since boot (all cores, all processes)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def container_ids(names: set[str]) -> list[str]:
    client = docker_client()
    try:
        return [client.api.inspect_container(n)["Id"] for n in names]
    finally:
        client.close()


def container_cpu_s(container_id: str) -> float | None:
    """CPU seconds a container used so far (cgroup v1 or v2); None: not readable."""
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", 1e-6),
    ):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if path.endswith("cpu.stat"):  # "usage_usec N" on the first line
            return int(text.split()[1]) * scale
        return int(text) * scale
    return None


VERBOSE = bool(os.environ.get("BENCH_VERBOSE"))

# The fake model in a child process: every request with a run's marker plays an edit
# then a final text; each call answers after the latency. Prints its request count
# on stdin's end.
FAKE = """
import sys
from tests.support.fake_anthropic import FakeAnthropic, Turn
edit = {"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}
with FakeAnthropic(latency=float(sys.argv[1])) as fake:
    for i in range(int(sys.argv[2])):
        fake.script(Turn.tool("edit", edit), Turn.text("Fixed."), marker=f"bench-run-{i}:")
    print(fake.url, flush=True)
    sys.stdin.read()
    print(len(fake.message_requests()), flush=True)
"""


async def start_fake(latency: float, scripts: int) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FAKE,
        str(latency),
        str(scripts),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    url = (await proc.stdout.readline()).decode().strip()
    if not url.startswith("http"):
        raise RuntimeError("the fake model did not start")
    return proc, url


def make_repo(root: Path) -> Path:
    repo = root / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_calc.sh").write_text(
        "#!/bin/sh\npython3 -c 'import calc; assert calc.add(2, 3) == 5'\n"
    )
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@e",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@e",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "calc"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo


async def main(runs: int, latency: float) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="agentvm-bench-runs-")
    root = Path(tmp.name)
    repo = make_repo(root)
    fake, fake_url = await start_fake(latency, 2 * runs)
    os.environ.update(ANTHROPIC_BASE_URL=fake_url, ANTHROPIC_API_KEY="sk-ant-bench-runs")
    settings = HostSettings(
        host_id=HOST_ID, warm_pool=runs, repo_roots=str(root), prestart_agents="coding-agent"
    )
    config = EngineConfig(db=str(root / "bench.db"), run_concurrency=runs)
    managers: list[Any] = []

    def registry(manager: Any) -> Any:
        managers.append(manager)
        return build_registry(manager, settings)

    def body(i: int) -> dict[str, Any]:
        return {
            "repo": str(repo),
            "issue": f"bench-run-{i}: add(2, 3) returns -1",
            "test_command": "sh test_calc.sh",
        }

    async def pool_full() -> None:
        deadline = time.monotonic() + 300
        while managers[0].pool_ready() < runs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm pool not refilled: {managers[0].pool_ready()}")
            await asyncio.sleep(0.2)
        await asyncio.wait_for(managers[0].wait_pool_agents(), 300)
        await pool_idle()

    async def pool_idle() -> None:
        """Until the pool's containers are idle (their supervisors and agents done
        starting, at the pool's low CPU weight): no CPU used for 0.5 s by any."""
        ids = await asyncio.to_thread(container_ids, managers[0].pool_names())
        deadline = time.monotonic() + 300
        before = [container_cpu_s(i) or 0.0 for i in ids]
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = [container_cpu_s(i) or 0.0 for i in ids]
            if all(b - a < 0.01 for a, b in zip(before, now, strict=True)):
                return
            before = now
        raise RuntimeError("the warm pool's containers did not settle")

    vm_cpu: list[float] = []
    # Per run: seconds of each workflow step, and from its last step to the answer.
    steps_of: list[dict[str, float]] = []
    taken_at: dict[str, float] = {}

    def measure_vms(manager: Any) -> None:
        """Record the CPU each run's container used between the vm taking it and
        the vm's destroy (its cgroup; the pool's agent start before is not counted)."""
        acquire, destroy = manager.acquire, manager.destroy

        async def acquired(key: Any, options: Any) -> Any:
            sandbox, record = await acquire(key, options)
            taken_at[record.id] = container_cpu_s(record.id) or 0.0
            return sandbox, record

        async def destroyed(record: Any, extra: Any = None) -> None:
            used = container_cpu_s(record.id) if record is not None else None
            if used is not None and record.id in taken_at:
                vm_cpu.append(used - taken_at.pop(record.id))
            await destroy(record, extra)

        manager.acquire, manager.destroy = acquired, destroyed

    try:
        async with host_runtime(config, settings, registry=registry) as engine:
            automator = engine.client().automator.get_or_create("main")
            measure_vms(managers[0])

            async def one(i: int) -> float:
                start = time.perf_counter()
                sent = await automator.send("fixBug", body(i), wait=True, timeout=600)
                if sent.status != "completed" or not sent.response["fixed"]:
                    raise RuntimeError(f"run {i}: {sent.status} {sent.error or sent.response}")
                elapsed = time.perf_counter() - start
                run = await automator.run(sent.message_id)
                took = {e.path: (e.finished_at or 0) - (e.started_at or 0) for e in run.history}
                last = max((e.finished_at or 0) for e in run.history) if run.history else 0
                took["after-last-step"] = elapsed - (last - run.created_at) if last else 0
                steps_of.append(took)
                if VERBOSE:
                    t0 = run.created_at
                    steps = []
                    for e in run.history:
                        began = (e.started_at or t0) - t0
                        took = (e.finished_at or 0) - (e.started_at or 0)
                        steps.append(f"{e.path}:{began:.2f}+{took:.2f}")
                    start_at = (run.started_at or t0) - t0
                    end = (run.finished_at or t0) - t0
                    print(
                        f"run {i}: {elapsed:.2f}s start {start_at:.2f} end {end:.2f} {steps}",
                        file=sys.stderr,
                    )
                return elapsed

            loadavg = os.getloadavg()[0]
            await pool_full()
            busy, own = cpu_busy_s(), time.process_time()
            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(runs)))
            concurrent_s = time.perf_counter() - start
            concurrent_cpu = cpu_busy_s() - busy
            host_cpu = time.process_time() - own

            await pool_full()
            steps_of.clear()  # the serial runs' steps only: no contention between runs
            serial: list[float] = []
            serial_cpu = 0.0
            for i in range(runs, 2 * runs):
                busy = cpu_busy_s()
                serial.append(await one(i))
                serial_cpu += cpu_busy_s() - busy
            serial_s = sum(serial)
    finally:
        assert fake.stdin is not None and fake.stdout is not None
        fake.stdin.close()
        calls = int((await fake.stdout.readline()).decode().strip() or 0)
        await fake.wait()
        client = docker_client()
        remove_host(client, HOST_ID)
        client.close()
        tmp.cleanup()

    model_s = calls / (2 * runs) * latency  # model time of one run
    return {
        "runs": runs,
        "concurrency": runs,
        "model_latency_s": latency,
        "model_calls_per_run": calls / (2 * runs),
        "concurrent_s": round(concurrent_s, 2),
        "serial_s": round(serial_s, 2),
        "speedup": round(serial_s / concurrent_s, 2),
        "run_wall_median_s": round(statistics.median(serial), 2),
        "overhead_per_run_s": round(statistics.median(serial) - model_s, 2),
        "targets": {"speedup": 6, "overhead_per_run_s": 0.5},
        "cpus": os.cpu_count(),
        "loadavg_start": round(loadavg, 2),
        "concurrent_cpu_busy_s": round(concurrent_cpu, 1),
        "concurrent_cpu_per_run_s": round(concurrent_cpu / runs, 2),
        "serial_cpu_busy_s": round(serial_cpu, 1),
        "serial_cpu_per_run_s": round(serial_cpu / runs, 2),
        "vm_cpu_per_run_s": round(statistics.median(vm_cpu), 2) if vm_cpu else None,
        "host_cpu_per_run_s": round(host_cpu / runs, 2),
        # Where a serial run's overhead goes: median seconds per step (fix-bug
        # includes the model time), and from the last step to the answer.
        "serial_step_median_s": {
            k: round(statistics.median(t.get(k, 0.0) for t in steps_of), 3)
            for k in (steps_of[0] if steps_of else {})
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fixBug runs: concurrent vs serial")
    parser.add_argument("--quick", action="store_true", help="4 runs, shorter latency")
    parser.add_argument(
        "--smoke", action="store_true", help="1 run, 50 ms model calls: does it still run"
    )
    parser.add_argument("--runs", type=int, default=None, help="N (default 8; --quick: 4)")
    parser.add_argument("--latency", type=float, default=None, help="seconds per model call")
    args = parser.parse_args()
    n = args.runs or (1 if args.smoke else 4 if args.quick else 8)
    default_latency = 0.05 if args.smoke else 1.0 if args.quick else 2.0
    latency = args.latency if args.latency is not None else default_latency
    started = time.perf_counter()
    figures = asyncio.run(main(n, latency))
    figures["quick"] = args.quick
    figures["smoke"] = args.smoke
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))
