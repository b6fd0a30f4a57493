"""Runs survive ``kill -9``: several concurrent runs on one actor, the engine process
killed at random instants, all runs complete and no completed step runs again.

The worker is ``tests/crash/runs_worker.py`` (the pattern of ``test_crash_safety``).
The kill delays come from a seeded RNG printed in the failure message
(``RUNS_CRASH_SEED`` replays one).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.storage import is_postgres_url, open_store

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "crash" / "runs_worker.py"
RUNS = 5
STEPS = 6
KILLS = 6


def _spawn(tmp: Path, db: str, inc: int, *, seed: bool = False) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,  # not ``uv run``: the kill must hit the engine's process
        str(WORKER),
        "--db",
        db,
        "--effects",
        str(tmp / "effects"),
        "--marks",
        str(tmp / "marks"),
        "--incarnation",
        str(inc),
        "--runs",
        str(RUNS),
        "--steps",
        str(STEPS),
    ]
    if seed:
        cmd.append("--seed")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if is_postgres_url(db):
        # One stable host id, so each incarnation re-owns the leases at once.
        env["AGENTVM_HOST_ID"] = "runs-crash-worker"
    with open(tmp / f"inc-{inc}.log", "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def _wait_mark(tmp: Path, name: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not (tmp / "marks" / name).exists():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"no {name} within {timeout}s"
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_runs_resume_after_kill_9(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    db = str(tmp_path / "runs.db")
    if store == "postgresql":
        db = request.getfixturevalue("pg_server").create_database()
    seed = int(os.environ.get("RUNS_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    tag = f"[RUNS_CRASH_SEED={seed}]"
    (tmp_path / "marks").mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc = _spawn(tmp_path, db, 0, seed=True)
        procs.append(proc)
        assert proc.wait(timeout=60) == 0, f"{tag} seed failed"
        inc = 1
        for _ in range(KILLS):
            proc = _spawn(tmp_path, db, inc)
            procs.append(proc)
            # Half the kills land during start-up (recovery), half while runs execute.
            if rng.random() < 0.5:
                _wait_mark(tmp_path, f"ready-{inc}", proc, 60)
            time.sleep(rng.uniform(0, 0.3))
            proc.kill()
            proc.wait()
            inc += 1
        proc = _spawn(tmp_path, db, inc)
        procs.append(proc)
        assert proc.wait(timeout=120) == 0, (
            f"{tag} last incarnation failed: "
            + (tmp_path / f"inc-{inc}.log").read_text(errors="replace")[-3000:]
        )
        assert (tmp_path / "marks" / f"done-{inc}").exists()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    effects: dict[tuple[int, str], list[int]] = {}
    for line in (tmp_path / "effects").read_text().splitlines():
        i, run_id, step = line.split()
        effects.setdefault((int(run_id), step), []).append(int(i))

    async def read() -> dict[int, dict[str, int]]:
        store = open_store(db)
        await store.open()
        try:
            runs = await store.list_runs()
            assert len(runs) == RUNS and {r.status for r in runs} == {"completed"}, tag
            out = {}
            for r in runs:
                hist = await store.load_run_history(r.actor_id, r.run_id)
                out[r.run_id] = {
                    h.path.rsplit("/", 1)[1]: json.loads(h.output or "{}")["inc"] for h in hist
                }
            return out
        finally:
            await store.close()

    recorded = asyncio.run(read())
    for run_id, steps in recorded.items():
        assert sorted(steps) == sorted(f"s{s}" for s in range(STEPS)), (tag, run_id, steps)
        for step, committed_in in steps.items():
            ran_in = effects[(run_id, step)]
            # Run again only by incarnations killed before its commit; never after.
            assert max(ran_in) == committed_in, (tag, run_id, step, ran_in, committed_in)
            assert len(ran_in) == len(set(ran_in)), (tag, run_id, step, ran_in)
