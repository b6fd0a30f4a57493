"""The CLI's start-up: whole-process wall time of ``agentvm`` commands, beside Python's.

    uv run python bench/cli.py [--quick|--smoke]

Each command is a fresh process of the installed entry point (``.venv/bin/agentvm``,
next to the interpreter running this; ``uv run agentvm`` adds uv's own start-up, about
as much again), timed from spawn to exit, and the p50 over the runs is reported:

* ``python_floor_ms`` — ``python -c pass``: the interpreter alone, the floor;
* ``cli_help_ms`` — ``agentvm --help``;
* ``cli_ps_ms`` — ``agentvm ps`` against a live ``agentvm serve`` (the real host on a
  fresh SQLite file, no warm pool);
* ``cli_vm_ls_ms`` — ``agentvm vm ls KEY /home/user`` of a running vm of that host.

The commands are interleaved round by round, so the machine's load changes hit each
alike. On a busy machine a process waits for a CPU much of its wall time, so each
figure also has a ``*_cpu_ms`` twin: the user + system CPU time of the process (p50),
which the load changes little.
Target (issue 13): help and ps in at most 200 ms. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.docker import docker_client, remove_host  # noqa: E402

TARGET_MS = 200.0
_LISTENING = re.compile(r"listening on (http://\S+?)(?:\.? |\.?$)")


def entry_point() -> list[str]:
    """The installed ``agentvm`` script beside this interpreter (else ``-m host.cli``)."""
    script = Path(sys.executable).parent / "agentvm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "host.cli"]


def start_server(db: str, host_id: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}
    env.pop("AGENTVM_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "serve", "--db", db, "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # keep reading: a full pipe would stall the server
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen += line
        m = _LISTENING.search(line)
        if m:
            return proc, m.group(1).replace("://0.0.0.0:", "://127.0.0.1:")
    proc.kill()
    raise RuntimeError(f"agentvm serve did not start: {seen}")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawn to exit of one process (its output discarded), and the CPU
    seconds it used (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"{argv} failed ({res.returncode}): {res.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def measure(runs: int) -> dict[str, Any]:
    agentvm = entry_point()
    host_id = f"bench-cli-{uuid.uuid4().hex[:6]}"
    samples: dict[str, list[tuple[float, float]]] = {"floor": [], "help": [], "ps": [], "vm_ls": []}
    with tempfile.TemporaryDirectory(prefix="agentvm-bench-cli-") as tmp:
        proc, url = start_server(os.path.join(tmp, "cli.db"), host_id)
        env = {**os.environ, "AGENTVM_URL": url, "COLUMNS": "120"}
        env.pop("AGENTVM_TOKEN", None)
        try:
            # The vm is created (and the commands' files cached) before any timing.
            timed([*agentvm, "vm", "exec", "bench", "--", "true"], env)
            commands = {
                "floor": [sys.executable, "-c", "pass"],
                "help": [*agentvm, "--help"],
                "ps": [*agentvm, "ps"],
                "vm_ls": [*agentvm, "vm", "ls", "bench", "/home/user"],
            }
            for argv in commands.values():
                timed(argv, env)
            for _ in range(runs):
                for name, argv in commands.items():
                    samples[name].append(timed(argv, env))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            client = docker_client()
            remove_host(client, host_id)
            client.close()

    def p50(name: str, which: int = 0) -> float:
        return round(statistics.median(s[which] for s in samples[name]) * 1000, 1)

    return {
        "cli_help_ms": p50("help"),
        "cli_ps_ms": p50("ps"),
        "cli_vm_ls_ms": p50("vm_ls"),
        "python_floor_ms": p50("floor"),
        "cli_help_cpu_ms": p50("help", 1),
        "cli_ps_cpu_ms": p50("ps", 1),
        "cli_vm_ls_cpu_ms": p50("vm_ls", 1),
        "python_floor_cpu_ms": p50("floor", 1),
        "runs": runs,
        "entry_point": " ".join(Path(a).name for a in agentvm),
        "target_ms": TARGET_MS,
        "targets_met": {
            "cli_help_ms": p50("help") <= TARGET_MS,
            "cli_ps_ms": p50("ps") <= TARGET_MS,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 runs of each")
    parser.add_argument("--smoke", action="store_true", help="2 runs: does it still run")
    args = parser.parse_args()
    runs = 2 if args.smoke else 10 if args.quick else 30
    result = measure(runs)
    load1, _, _ = os.getloadavg()
    result.update(
        quick=args.quick,
        smoke=args.smoke,
        loadavg=round(load1, 2),
        python=platform.python_version(),
        cpus=os.cpu_count(),
    )
    for name in ("cli_help", "cli_ps", "cli_vm_ls", "python_floor"):
        wall, cpu = result[f"{name}_ms"], result[f"{name}_cpu_ms"]
        print(f"{name:<13} p50 {wall:7.1f} ms wall, {cpu:6.1f} ms CPU", file=sys.stderr)
    sys.stderr.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
