"""Crash worker for runs: one engine incarnation of ``tests/test_runs_crash.py``.

    python tests/crash/runs_worker.py --db DB --effects FILE --marks DIR --incarnation N
        --runs R --steps S [--seed]

Actor ``runner`` has a run queue ``jobs`` (concurrency 3). Each run executes S steps;
a step appends ``"<inc> <run_id> <step>"`` to FILE (one ``O_APPEND`` write, never
torn by ``kill -9``), holds a moment, and returns ``{"inc": <inc>}``. The seed
incarnation sends R messages and stops; every later one runs until all runs are
``completed`` (marker ``done-N``). ``ready-N`` marks an engine that has started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import zlib
from pathlib import Path
from typing import Any

from orchestrator import Engine, actor, queue, setup

INC = -1
_FD = -1


def build(steps: int) -> Any:
    async def handle(ctx: Any, message: Any) -> Any:
        run_id = ctx.run_id
        for s in range(steps):
            name = f"s{s}"
            # Deterministic mix: synchronous steps and steps held open a while, so
            # kills land before, inside and after step bodies and their commits.
            hold = (zlib.crc32(f"{run_id}:{name}".encode()) % 5) * 0.01

            async def body(name: str = name, hold: float = hold) -> dict[str, int]:
                os.write(_FD, f"{INC} {run_id} {name}\n".encode())
                if hold:
                    await asyncio.sleep(hold)
                return {"inc": INC}

            await ctx.step(name, body)
        return {"body": message.body, "inc": INC}

    return setup(use={"runner": actor(queues={"jobs": queue(run=handle, concurrency=3)})})


async def main() -> int:
    global INC, _FD
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--effects", required=True)
    p.add_argument("--marks", required=True)
    p.add_argument("--incarnation", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", action="store_true")
    args = p.parse_args()
    INC = args.incarnation
    _FD = os.open(args.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    marks = Path(args.marks)
    engine = Engine(build(args.steps), db=args.db, sleep_timeout=None)
    await engine.start()
    try:
        handle = engine.client().runner.get_or_create("main")
        if args.seed:
            for i in range(args.runs):
                await handle.send("jobs", i)
            (marks / f"ready-{INC}").write_text("")
            return 0
        await handle.resolve()
        (marks / f"ready-{INC}").write_text("")
        while True:
            runs = await engine.list_runs(status="completed")
            if len(runs) == args.runs:
                break
            await asyncio.sleep(0.02)
        (marks / f"done-{INC}").write_text("")
        return 0
    finally:
        await engine.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
