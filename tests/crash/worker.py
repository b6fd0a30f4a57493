"""Crash-safety stress worker: one incarnation of an engine that gets ``kill -9``-ed.

Run by ``tests/test_crash_safety.py`` as a real subprocess (directly with the
venv's interpreter, never through ``uv run``: a SIGKILL sent to ``uv`` would
orphan the Python child, and two incarnations would then share the database)::

    python tests/crash/worker.py --db DB --effects FILE --marks DIR \\
        --incarnation N --config JSON [--seed]

Every incarnation appends its side effects to FILE, one ``os.write`` on an
``O_APPEND`` descriptor per line (a single small append is never torn by a
process kill, and the page cache survives ``kill -9``, so no fsync is needed):

* ``"<inc> <actor> <i>"`` when workflow actor ``<actor>`` runs the step of loop
  iteration ``<i>``; the step returns ``{"inc": <inc>, "released": bool}``;
* ``"<inc> msg <n>"`` when the consumer processes message ``n``; the same step
  appends ``{"n", "inc", "mid"}`` to the consumer's state.

Phases:

* ``--seed`` (incarnation 0, never killed): create the actors, send every queue
  message and arm every timer (each awaited, i.e. committed), then stop cleanly.
* every later incarnation starts the engine (which recovers whatever was
  running) and runs until every workflow has finished and every timer has
  fired, then stops cleanly and exits 0. The workflow actors loop forever, one
  step per iteration, until the file ``config["release_file"]`` exists; the
  harness creates it only before the last incarnation, so every earlier one
  still has work in flight when it is killed.

Marker files in DIR tell the harness how far an incarnation got:
``starting-N`` (about to open the engine), ``ready-N`` (engine started and,
in the seed phase, everything sent), ``done-N`` (finished, engine stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import zlib
from pathlib import Path
from typing import Any

from orchestrator import Engine, Loop, actor, queue, setup, workflow

INC = -1
_EFFECTS_FD = -1


def effect(text: str) -> None:
    """Append one side-effect line tagged with this incarnation (one write syscall)."""
    os.write(_EFFECTS_FD, f"{INC} {text}\n".encode())


def _mark(marks: Path, name: str) -> None:
    (marks / f"{name}-{INC}").write_text(str(os.getpid()))


def step_delay(label: str, step_time: float) -> float:
    """How long the step for ``label`` keeps running after its side effect.

    Deterministic per step, mixed: many steps are synchronous (no await at all),
    others yield briefly or hold the step open for a while, so kills land
    before, inside and after step bodies and their commits.
    """
    r = zlib.crc32(label.encode()) % 100
    if r < 35:
        return -1.0  # synchronous step function
    if r < 60:
        return 0.0  # async, yields once
    if r < 92:
        return step_time
    return step_time * 4


def nap_length(i: int, short: float, long: float) -> float:
    """Durable sleeps: short ones, and long ones that outlast the idle timeout so
    the actor goes to sleep with an alarm and replays from history when it wakes."""
    return long if (i // 3) % 2 else short


def build_registry(cfg: dict[str, Any]) -> Any:
    step_time = float(cfg["step_time"])
    short_nap = float(cfg["short_nap"])
    long_nap = float(cfg["long_nap"])
    messages = int(cfg["messages"])
    ticks = int(cfg["ticks"])
    tick_interval = float(cfg["tick_interval"])

    def make_step(label: str, line: str, on_done: Any = None) -> Any:
        delay = step_delay(label, step_time)

        def finish() -> dict[str, Any]:
            return {"inc": INC, **(on_done() or {})} if on_done is not None else {"inc": INC}

        if delay < 0:

            def sync_step() -> dict[str, Any]:
                effect(line)
                return finish()

            return sync_step

        async def async_step() -> dict[str, Any]:
            effect(line)
            await asyncio.sleep(delay)
            return finish()

        return async_step

    # (a) workflow actors: one step per loop iteration and a durable sleep every
    # third iteration. The step also reports whether the release file exists (its
    # recorded output decides, so replay takes the same decision). Nothing but
    # their own timers wakes these actors: a lost wake-up alarm shows up as a
    # workflow that never finishes.
    release = Path(cfg["release_file"])

    def released() -> dict[str, bool]:
        return {"released": release.exists()}

    @workflow
    async def work(ctx: Any) -> Any:
        name = ctx.key[0]

        async def iteration(ictx: Any, st: dict[str, int]) -> Any:
            i = st["i"]
            out = await ictx.step("s", make_step(f"{name}/{i}", f"{name} {i}", released))
            if out["released"]:
                return Loop.break_(i + 1)
            if i % 3 == 2:
                await ictx.sleep("nap", nap_length(i, short_nap, long_nap))
            return Loop.continue_({"i": i + 1})

        # Keep every iteration in history so the harness can check each step.
        n = await ctx.loop("work", iteration, state={"i": 0}, history_keep=10**9)
        return {"iterations": n}

    # (b) the consumer: alternates a completable receive on "c" and a
    # non-completable one on "n"; each message is processed in one step that
    # records it in state (committed together with the step).
    @workflow
    async def consume(ctx: Any) -> Any:
        async def iteration(ictx: Any, st: dict[str, int]) -> Any:
            i = st["i"]
            completable = i % 2 == 0
            msg = await ictx.queue.next(
                "recv", names=["c" if completable else "n"], completable=completable
            )
            n = msg.body["n"]

            def record() -> None:
                ictx.state["processed"].append({"n": n, "inc": INC, "mid": msg.id})
                return None

            await ictx.step("process", make_step(f"msg/{n}", f"msg {n}", record))
            if completable:
                await msg.complete({"n": n})
            if i + 1 == messages:
                return Loop.break_(messages)
            return Loop.continue_({"i": i + 1})

        n = await ctx.loop("consume", iteration, state={"i": 0})
        return {"processed": n}

    # (c) timers: a chain of ticks (each tick schedules the next in the same
    # commit) and a few one-shot timers armed during the seed.
    async def arm(c: Any, shots: list[list[Any]]) -> None:
        for name, delay in shots:
            await c.schedule.after(delay, "fire", name)
        await c.schedule.after(tick_interval, "tick", 0)

    async def tick(c: Any, n: int) -> None:
        c.state["ticks"].append([n, INC])
        if n + 1 < ticks:
            await c.schedule.after(tick_interval, "tick", n + 1)

    def fire(c: Any, name: str) -> None:
        c.state["fired"].append([name, INC])

    return setup(
        use={
            "wf": actor(run=work),
            "consumer": actor(
                state={"processed": []}, queues={"c": queue(), "n": queue()}, run=consume
            ),
            "timer": actor(
                state={"ticks": [], "fired": []},
                actions={"arm": arm, "tick": tick, "fire": fire},
            ),
        }
    )


async def seed(engine: Engine, cfg: dict[str, Any]) -> None:
    client = engine.client()
    for w in range(cfg["workflows"]):
        await client.wf.get_or_create(f"w{w}").resolve()
    consumer = client.consumer.get_or_create("main")
    for n in range(cfg["messages"]):
        await consumer.send("c" if n % 2 == 0 else "n", {"n": n})
    await client.timer.get_or_create("main").arm(cfg["shots"])


async def finished(engine: Engine, cfg: dict[str, Any]) -> bool:
    actors = await engine.list_actors()
    flows = [a for a in actors if a.name in ("wf", "consumer")]
    if len(flows) != cfg["workflows"] + 1:
        return False
    if any(a.workflow_status not in ("completed", "failed") for a in flows):
        return False
    state = await engine.client().timer.get("main").fetch_state()
    return len(state["ticks"]) >= cfg["ticks"] and len(state["fired"]) >= len(cfg["shots"])


async def main() -> int:
    global INC, _EFFECTS_FD
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--effects", required=True)
    p.add_argument("--marks", required=True)
    p.add_argument("--incarnation", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--seed", action="store_true")
    args = p.parse_args()
    cfg = json.loads(args.config)
    INC = args.incarnation
    _EFFECTS_FD = os.open(args.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    marks = Path(args.marks)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format=f"%(levelname)s inc={INC} %(name)s: %(message)s",
    )
    registry = build_registry(cfg)
    _mark(marks, "starting")
    engine = Engine(registry, db=args.db, sleep_timeout=cfg["sleep_timeout"])
    await engine.start()
    try:
        if args.seed:
            await seed(engine, cfg)
            _mark(marks, "ready")
            return 0
        _mark(marks, "ready")
        # Chaos incarnations never finish: the workflow actors loop until the
        # harness creates the release file, just before the last incarnation.
        while True:
            if await finished(engine, cfg):
                return 0
            await asyncio.sleep(0.02)
    finally:
        await engine.stop()
        _mark(marks, "done")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
