"""Crash safety, proven: ``kill -9`` a real engine process at random instants.

``tests/crash/worker.py`` runs an :class:`~orchestrator.Engine` on a SQLite file
in a real subprocess. A clean seed incarnation creates the actors, sends every
queue message and arms every timer. Then the harness starts the worker again
and again, each time with the next incarnation number, and ``SIGKILL``\\s it
after a random delay: mostly while it runs (counted from the moment the engine
is ready), sometimes while it starts up and recovers. Finally it creates the
release file and lets the last incarnation run until everything is done.

Then it reads the SQLite file (read-only) and the side-effects file and checks
the engine's guarantees (docs/engine.md):

* every workflow completed;
* a completed step never runs again: for a step whose recorded output says it
  ran in incarnation k, the side-effects file holds exactly one line for that
  step from incarnation k and none from a later one (earlier ones are allowed:
  the step was in flight when that incarnation was killed, at least once);
* every queue message (completable and not) was processed exactly once in
  committed state, and none is left queued;
* every timer fired exactly once in committed state (a chain of ticks, each
  scheduling the next, and one-shot timers spread over the chaos), and no
  schedule is left;
* every durable sleep completed, not before its deadline.

The kill schedule comes from a seeded RNG, printed with every run and in every
failure; rerun with ``CRASH_SEED=<seed>`` (and ``CRASH_KILLS=<n>`` to change the
number of kills). The seed fixes the kill delays, not
the interleaving inside the worker, so a rerun hits similar, not identical,
instants.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.storage import is_postgres_url
from tests.support.postgres import SyncConnection

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "crash" / "worker.py"

# A durable sleep must not end before its deadline. The engine waits on the
# event loop's monotonic clock but records wall-clock times; this slack only
# absorbs the drift between the two clocks over one short sleep.
CLOCK_SLACK = 0.005


@dataclass(frozen=True)
class Chaos:
    kills: int
    # A kill aimed at a running engine comes uniformly within this many seconds
    # after the engine reported ready.
    max_kill_delay: float
    # Share of kills aimed at start-up instead: uniformly within
    # ``startup_kill_window`` seconds after the worker begins opening the engine
    # (store open, recovery, replay of every awake workflow).
    startup_kill_share: float
    workflows: int
    messages: int
    ticks: int
    tick_interval: float
    step_time: float
    startup_kill_window: float = 0.15
    short_nap: float = 0.01
    # Longer than sleep_timeout: the actor sleeps and must be woken by its alarm.
    long_nap: float = 0.15
    sleep_timeout: float = 0.05
    # Deadlines for the clean phases (a hang is a failure, not a slow pass).
    seed_timeout: float = 60.0
    finish_timeout: float = 60.0
    # The one-shot timers are spread over roughly this many seconds.
    timer_span: float = 4.0


DEFAULT = Chaos(
    kills=5,
    max_kill_delay=0.4,
    startup_kill_share=0.2,
    workflows=4,
    messages=40,
    ticks=10,
    tick_interval=0.2,
    step_time=0.05,
    timer_span=4.0,
)

SLOW = Chaos(
    kills=100,
    max_kill_delay=0.5,
    startup_kill_share=0.2,
    workflows=6,
    messages=600,
    ticks=80,
    tick_interval=0.75,
    step_time=0.05,
    timer_span=75.0,
    finish_timeout=300.0,
)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_crash_safety(tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    """A handful of kill points; a few seconds. Against both stores."""
    db = None
    if store == "postgresql":
        db = request.getfixturevalue("pg_server").create_database()
    run_chaos(tmp_path, DEFAULT, db=db)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crash_safety_many_kills(tmp_path: Path) -> None:
    """At least 50 kill points."""
    run_chaos(tmp_path, SLOW)


# --- the harness ---------------------------------------------------------------------------


class Run:
    """One stress run: its files, its worker processes and its seed."""

    def __init__(self, tmp: Path, chaos: Chaos, seed: int, db: str | None = None) -> None:
        self.tmp = tmp
        self.chaos = chaos
        self.seed = seed
        # A SQLite file, or a PostgreSQL database's URL.
        self.db = db or str(tmp / "agentvm.db")
        self.postgres = is_postgres_url(self.db)
        self.effects = tmp / "effects.log"
        self.marks = tmp / "marks"
        self.logs = tmp / "logs"
        self.release = tmp / "release"
        self.marks.mkdir()
        self.logs.mkdir()
        span = chaos.timer_span
        self.shots = [["now", 0.0]] + [
            [f"t{i}", round(span * f, 3)] for i, f in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 1.2))
        ]
        self.config = {
            "workflows": chaos.workflows,
            "messages": chaos.messages,
            "ticks": chaos.ticks,
            "tick_interval": chaos.tick_interval,
            "shots": self.shots,
            "step_time": chaos.step_time,
            "short_nap": chaos.short_nap,
            "long_nap": chaos.long_nap,
            "sleep_timeout": chaos.sleep_timeout,
            "release_file": str(self.release),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kill_log: list[tuple[int, str, float]] = []

    def tag(self) -> str:
        return f"[CRASH_SEED={self.seed}]"

    def log_path(self, inc: int) -> Path:
        return self.logs / f"inc-{inc}.log"

    def log_tail(self, inc: int, lines: int = 40) -> str:
        try:
            text = self.log_path(inc).read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:]) or "<empty log>"

    def spawn(self, inc: int, *, seed_phase: bool = False) -> subprocess.Popen[bytes]:
        # The venv's interpreter directly, not ``uv run``: SIGKILL must hit the
        # process that holds the engine, not a launcher that would orphan it.
        cmd = [
            sys.executable,
            str(WORKER),
            "--db",
            str(self.db),
            "--effects",
            str(self.effects),
            "--marks",
            str(self.marks),
            "--incarnation",
            str(inc),
            "--config",
            json.dumps(self.config),
        ]
        if seed_phase:
            cmd.append("--seed")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if self.postgres:
            # One stable host id: each incarnation re-owns the leases at once (a new id
            # would wait for the killed one's leases to expire).
            env["AGENTVM_HOST_ID"] = "crash-worker"
        with open(self.log_path(inc), "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.procs.append(proc)
        return proc

    def marked(self, name: str, inc: int) -> bool:
        return (self.marks / f"{name}-{inc}").exists()

    def wait_for(
        self, what: str, cond: Any, proc: subprocess.Popen[bytes], inc: int, timeout: float
    ) -> None:
        """Poll ``cond()`` until true; fail if the worker dies first or the deadline passes."""
        deadline = time.monotonic() + timeout
        while not cond():
            if proc.poll() is not None:
                raise AssertionError(
                    f"{self.tag()} incarnation {inc} exited with {proc.returncode} before {what}"
                    f"\n--- log ---\n{self.log_tail(inc)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.tag()} incarnation {inc}: no {what} within {timeout}s"
                    f"\n--- log ---\n{self.log_tail(inc)}"
                )
            time.sleep(0.005)

    def wait_exit(self, proc: subprocess.Popen[bytes], inc: int, timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"{self.tag()} incarnation {inc} did not finish within {timeout}s.\n"
                f"{self.diagnose()}\n--- log ---\n{self.log_tail(inc)}"
            ) from None

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # -- reading the database

    def connect(self) -> Any:
        if self.postgres:
            return SyncConnection(self.db)
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)

    def check_wakeable(self, when: str) -> None:
        """No lost wake-up: a running workflow here only ever waits for its own
        timers (the workflow actors) or for messages that are already queued (the
        consumer), so it must be awake or asleep with an alarm. Otherwise nothing
        would ever wake it again: recovery only wakes actors that were awake or
        have an alarm."""
        with closing(self.connect()) as conn:
            stuck = conn.execute(
                "SELECT name, key, alarm_at FROM actors WHERE workflow_status = 'running'"
                " AND sleeping AND alarm_at IS NULL"
            ).fetchall()
        assert not stuck, (
            f"{self.tag()} {when}: running workflows asleep with no wake-up alarm: {stuck}"
            f" (kills so far: {self.kill_log})\n{self.diagnose()}"
        )

    def diagnose(self) -> str:
        """What is unfinished, for a run that hangs."""
        out = []
        with closing(self.connect()) as conn:
            for actor_id, name, key, status, sleeping, alarm_at in conn.execute(
                "SELECT actor_id, name, key, workflow_status, sleeping, alarm_at FROM actors"
            ):
                if status in (None, "completed"):
                    continue
                last = conn.execute(
                    "SELECT path, kind, status, meta FROM workflow_history WHERE actor_id = ?"
                    " ORDER BY seq DESC LIMIT 3",
                    (actor_id,),
                ).fetchall()
                out.append(
                    f"  {name}{key}: workflow {status}, sleeping={sleeping}, alarm_at={alarm_at},"
                    f" now={time.time():.3f}, last entries={last}"
                )
            state = conn.execute("SELECT state FROM actors WHERE name = 'timer'").fetchone()
            schedules = conn.execute("SELECT action, args, fire_at FROM schedules").fetchall()
        out.append(f"  timer state={state}, schedules={schedules}")
        return "unfinished:\n" + "\n".join(out)


def run_chaos(tmp: Path, chaos: Chaos, *, db: str | None = None) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**32))
    if os.environ.get("CRASH_KILLS"):
        chaos = replace(chaos, kills=int(os.environ["CRASH_KILLS"]))
    rng = random.Random(seed)
    run = Run(tmp, chaos, seed, db)
    print(f"\ncrash-safety: CRASH_SEED={seed} {asdict(chaos)}")
    started = time.monotonic()
    try:
        # Seed: every message and timer committed before any kill.
        proc = run.spawn(0, seed_phase=True)
        rc = run.wait_exit(proc, 0, chaos.seed_timeout)
        assert rc == 0, f"{run.tag()} seed phase failed ({rc})\n{run.log_tail(0)}"
        run.check_wakeable("after the seed phase")

        for inc in range(1, chaos.kills + 1):
            proc = run.spawn(inc)
            if rng.random() < chaos.startup_kill_share:
                phase = "start-up"
                delay = rng.uniform(0.0, chaos.startup_kill_window)
                run.wait_for("start marker", lambda i=inc: run.marked("starting", i), proc, inc, 60)
            else:
                phase = "running"
                delay = rng.uniform(0.0, chaos.max_kill_delay)
                run.wait_for("ready marker", lambda i=inc: run.marked("ready", i), proc, inc, 60)
            time.sleep(delay)  # the random instant under test
            # The release file does not exist yet, so the worker cannot be done.
            assert proc.poll() is None, (
                f"{run.tag()} incarnation {inc} exited with {proc.returncode} before its kill"
                f"\n--- log ---\n{run.log_tail(inc)}"
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            run.kill_log.append((inc, phase, round(delay, 4)))
            run.check_wakeable(f"after killing incarnation {inc}")

        final = chaos.kills + 1
        run.release.touch()
        proc = run.spawn(final)
        rc = run.wait_exit(proc, final, chaos.finish_timeout)
        assert rc == 0, f"{run.tag()} final incarnation failed ({rc})\n{run.log_tail(final)}"
    finally:
        run.cleanup()
    elapsed = time.monotonic() - started

    stats = check(run, final)
    print(
        f"crash-safety: CRASH_SEED={seed} passed in {elapsed:.1f}s; kills={run.kill_log}; {stats}"
    )


# --- the checks ------------------------------------------------------------------------------


def _parse_effects(run: Run, final: int, problems: list[str]) -> dict[tuple[str, int], list[int]]:
    """``(actor or "msg", index) -> [incarnation of each line]``."""
    lines: dict[tuple[str, int], list[int]] = defaultdict(list)
    for n, line in enumerate(run.effects.read_text().splitlines(), 1):
        parts = line.split(" ")
        try:
            inc, who, idx = int(parts[0]), parts[1], int(parts[2])
            if len(parts) != 3 or not 0 <= inc <= final:
                raise ValueError
        except (ValueError, IndexError):
            problems.append(f"effects line {n} is malformed: {line!r}")
            continue
        lines[(who, idx)].append(inc)
    return lines


def _check_once(what: str, recorded: int, incs: list[int], problems: list[str]) -> None:
    """Exactly one line from the recording incarnation, none from a later one."""
    counts = Counter(incs)
    if counts[recorded] != 1:
        problems.append(
            f"{what}: recorded in incarnation {recorded}, but that incarnation wrote "
            f"{counts[recorded]} side-effect lines (all lines: {incs})"
        )
    later = sorted(i for i in incs if i > recorded)
    if later:
        problems.append(
            f"{what}: completed in incarnation {recorded} but ran again in {later} "
            f"(all lines: {incs})"
        )


def _check_order(seq: list[tuple[str, int, list[int]]], problems: list[str]) -> None:
    """A step's output is committed before the workflow moves on: once any later
    step of the same workflow has run in incarnation m, this step was already
    recorded, so its recorded incarnation is at most m."""
    earliest_later: int | None = None
    for what, recorded, incs in reversed(seq):
        if earliest_later is not None and recorded > earliest_later:
            problems.append(
                f"{what}: recorded in incarnation {recorded}, but a later step had already "
                f"run in incarnation {earliest_later}: the workflow moved on before the "
                f"step's output was committed"
            )
        if incs:
            low = min(incs)
            earliest_later = low if earliest_later is None else min(earliest_later, low)


def check(run: Run, final: int) -> str:
    chaos = run.chaos
    problems: list[str] = []
    effects = _parse_effects(run, final, problems)
    seen: set[tuple[str, int]] = set()
    reruns = 0  # steps that ran in more than one incarnation (in flight at a kill)

    conn = run.connect()
    try:
        actors = {
            (name, tuple(json.loads(key))): (actor_id, status, output, error, state)
            for actor_id, name, key, status, output, error, state in conn.execute(
                "SELECT actor_id, name, key, workflow_status, workflow_output, workflow_error,"
                " state FROM actors"
            )
        }

        def history(actor_id: str) -> dict[str, tuple[Any, ...]]:
            return {
                row[0]: row[1:]
                for row in conn.execute(
                    "SELECT path, kind, status, output, meta, started_at, finished_at"
                    " FROM workflow_history WHERE actor_id = ?",
                    (actor_id,),
                )
            }

        # (a) the workflow actors
        iterations: dict[str, int] = {}
        for w in range(chaos.workflows):
            name = f"w{w}"
            row = actors.get(("wf", (name,)))
            if row is None:
                problems.append(f"workflow actor {name} is missing")
                continue
            actor_id, status, output, error, _ = row
            if status != "completed":
                problems.append(f"workflow {name} is {status!r}, not completed: {error}")
                continue
            n = json.loads(output)["iterations"]
            iterations[name] = n
            entries = history(actor_id)
            order: list[tuple[str, int, list[int]]] = []
            expected = {"work"}
            loop = entries.get("work")
            if loop is None or loop[:3] != ("loop", "completed", str(n)):
                problems.append(f"{name}: loop entry is {loop}, expected completed with {n}")
            for i in range(n):
                base = f"work/~{i}"
                step = entries.get(f"{base}/s")
                expected.add(f"{base}/s")
                if step is None or step[:2] != ("step", "completed"):
                    problems.append(f"{name}: step {base}/s is {step}, expected completed")
                    continue
                k = json.loads(step[2])["inc"]
                incs = effects.get((name, i), [])
                seen.add((name, i))
                _check_once(f"{name} step {i}", k, incs, problems)
                order.append((f"{name} step {i}", k, incs))
                reruns += len(set(incs)) > 1
                last = i == n - 1
                if json.loads(step[2]).get("released") is not last:
                    problems.append(f"{name}: step {i} output {step[2]}, expected released={last}")
                if i % 3 == 2 and not last:
                    expected.add(f"{base}/nap")
                    nap = entries.get(f"{base}/nap")
                    if nap is None or nap[:2] != ("sleep", "completed"):
                        problems.append(f"{name}: sleep {base}/nap is {nap}, expected completed")
                        continue
                    wake_at = json.loads(nap[3])["wake_at"]
                    if nap[5] < wake_at - CLOCK_SLACK:
                        problems.append(
                            f"{name}: sleep {base}/nap ended at {nap[5]}, before its deadline "
                            f"{wake_at}"
                        )
                    nxt = entries.get(f"work/~{i + 1}/s")
                    if nxt is not None and nxt[4] < wake_at - CLOCK_SLACK:
                        problems.append(
                            f"{name}: step {i + 1} started at {nxt[4]}, before the preceding "
                            f"sleep's deadline {wake_at}"
                        )
            _check_order(order, problems)
            extra = sorted(set(entries) - expected)
            if extra:
                problems.append(f"{name}: unexpected history entries {extra[:10]}")

        # (b) the consumer
        row = actors.get(("consumer", ("main",)))
        processed: list[dict[str, Any]] = []
        if row is None:
            problems.append("consumer actor is missing")
        else:
            actor_id, status, output, error, state = row
            if status != "completed":
                problems.append(f"consumer workflow is {status!r}, not completed: {error}")
            processed = json.loads(state)["processed"]
            ns = [p["n"] for p in processed]
            dup = sorted(n for n, c in Counter(ns).items() if c > 1)
            if dup:
                problems.append(f"messages processed more than once in committed state: {dup}")
            missing = sorted(set(range(chaos.messages)) - set(ns))
            if missing:
                problems.append(f"messages never processed (lost): {missing}")
            unknown = sorted(set(ns) - set(range(chaos.messages)))
            if unknown:
                problems.append(f"unknown messages processed: {unknown}")
            consumer_order: list[tuple[str, int, list[int]]] = []
            mids = [p["mid"] for p in processed]
            if len(set(mids)) != len(mids):
                problems.append(f"one message id processed twice: {sorted(mids)}")
            for p in processed:
                if ("msg", p["n"]) in seen:
                    continue  # a duplicate, reported above
                incs = effects.get(("msg", p["n"]), [])
                seen.add(("msg", p["n"]))
                _check_once(f"message {p['n']}", p["inc"], incs, problems)
                consumer_order.append((f"message {p['n']}", p["inc"], incs))
                reruns += len(set(incs)) > 1
            _check_order(consumer_order, problems)
        left = conn.execute("SELECT message_id, queue, body FROM queue_messages").fetchall()
        if left:
            problems.append(f"messages left in queue_messages: {left}")

        # (c) timers
        row = actors.get(("timer", ("main",)))
        ticks: list[list[int]] = []
        if row is None:
            problems.append("timer actor is missing")
        else:
            state = json.loads(row[4])
            ticks = state["ticks"]
            if [t[0] for t in ticks] != list(range(chaos.ticks)):
                problems.append(
                    f"tick chain fired {[t[0] for t in ticks]}, "
                    f"expected 0..{chaos.ticks - 1} once each"
                )
            fired = sorted(f[0] for f in state["fired"])
            if fired != sorted(s[0] for s in run.shots):
                problems.append(
                    f"one-shot timers fired {fired}, expected each of "
                    f"{sorted(s[0] for s in run.shots)} once"
                )
        left = conn.execute("SELECT schedule_id, action, args FROM schedules").fetchall()
        if left:
            problems.append(f"schedules left after everything fired: {left}")
    finally:
        conn.close()

    stray = sorted(set(effects) - seen)
    if stray:
        problems.append(f"side effects of steps that are not in committed history: {stray[:20]}")

    for inc in range(final + 1):
        for line in run.log_path(inc).read_text(errors="replace").splitlines():
            if line.startswith(("ERROR", "CRITICAL", "Traceback")):
                problems.append(f"incarnation {inc} logged: {line}")

    if chaos.kills >= 20 and reruns == 0:
        problems.append("no step was ever in flight at a kill: the chaos did not bite")

    assert not problems, (
        f"{run.tag()} crash-safety violations (kills: {run.kill_log}):\n  "
        + "\n  ".join(problems[:60])
    )
    steps = sum(iterations.values())
    return (
        f"workflow steps={steps} {iterations}, messages={len(processed)}, ticks={len(ticks)}, "
        f"steps re-run after a kill={reruns}"
    )
