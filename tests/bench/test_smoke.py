"""Every benchmark still runs: ``bench/X.py --smoke`` (tiny counts, seconds) exits 0 and
its last line is the JSON object with the figures the README quotes.

A renamed module, a changed API or a removed figure breaks this test, not the README.
No figure is judged here (the machine may be busy): only that each is a number.
``bench/engine.py`` runs both sides, DBOS included: with this interpreter when DBOS is
installed in it, else through ``uv run --group bench``. The Docker ones use the
images the other tests build (common; common + coding-agent for sessions and runs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# bench file -> the figures its last line must hold (besides "smoke": true).
FIGURES: dict[str, tuple[str, ...]] = {
    "cli.py": ("cli_help_ms", "cli_ps_ms", "cli_vm_ls_ms", "python_floor_ms"),
    "http_api.py": (
        "action_p50_ms",
        "bare_p50_ms",
        "overhead_p50_ms",
        "queue_send_seq_per_s",
        "queue_send_c16_per_s",
    ),
    "engine.py": (
        "agentvm_step_us",
        "dbos_step_us",
        "step_overhead_ratio",
        "queue_throughput_ratio",
        "recovery_1000_s",
    ),
    "sandbox.py": (
        "ours_exec_p50_ms",
        "docker_exec_run_p50_ms",
        "ours_acquire_cold_p50_ms",
        "acquire_cold_ratio",
        "idle_sandbox_mib",
        "default_vm_mib",
        "wake_ratio",
    ),
    "checkpoints.py": ("checkpoint_s", "restore_s", "fork_s", "fork_ratio"),
    "sessions.py": ("turn_overhead_ms", "session_ready_ms", "session_ready_cold_ms"),
    "runs.py": ("speedup", "overhead_per_run_s", "concurrent_s", "serial_s"),
    "cluster.py": ("runs_per_s_1", "runs_per_s_3", "scaling_3_hosts"),
}
# The longest (a whole fixBug run; agent sessions' cold starts): 10-20 s each on an
# idle 2-core machine, 45-50 s under load. ``make bench-smoke`` runs them too.
SLOW = {"sessions.py", "runs.py", "cluster.py"}  # cluster: 1 then 3 hosts start, ~30 s
NO_DOCKER = {"http_api.py", "engine.py", "cluster.py"}
# Modules the benchmarks import, not benchmarks (as are bench/_*.py).
HELPERS = {"session_trace.py"}


def _command(name: str) -> list[str]:
    script = str(ROOT / "bench" / name)
    if name == "engine.py" and importlib.util.find_spec("dbos") is None:
        uv = shutil.which("uv")
        if uv is None:
            pytest.fail(
                "bench/engine.py needs DBOS: install the bench group (uv sync --group bench)"
            )
        return [uv, "run", "--group", "bench", "python", script, "--smoke"]
    return [sys.executable, script, "--smoke"]


def _marks(name: str) -> list[pytest.MarkDecorator]:
    marks = [] if name in NO_DOCKER else [pytest.mark.docker]
    return marks + ([pytest.mark.slow] if name in SLOW else [])


def test_every_benchmark_has_a_smoke_run() -> None:
    scripts = [
        p.name
        for p in (ROOT / "bench").glob("*.py")
        if not p.name.startswith("_") and p.name not in HELPERS
    ]
    assert sorted(scripts) == sorted(FIGURES)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=_marks(n), id=n.removesuffix(".py")) for n in FIGURES]
)
def test_smoke(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTVM_TOKEN", "AGENTVM_URL")}
    res = subprocess.run(
        _command(name), cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
    )
    tail = (res.stdout + res.stderr)[-3000:]
    assert res.returncode == 0, tail
    lines = res.stdout.strip().splitlines()
    assert lines, tail
    figures = json.loads(lines[-1])
    assert figures.get("smoke") is True, figures
    for key in FIGURES[name]:
        assert isinstance(figures.get(key), int | float), (key, figures)
