"""Race steps: the step's vm is checkpointed (``fork-base-<id>``), a vm per candidate
is forked from it, and the candidates race (``race-<id>``, the engine's durable
race): the first whose turn ends well and whose ``check`` passes wins. The losers
are cancelled and their vms destroyed; the winner's vm replaces the step's vm for
the steps that start after it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ActorNotFound, HistoryDivergedError, StepExhaustedError
from orchestrator.workflow import WorkflowContext

from .definition import StepDef
from .executor import RESTORE_TIMEOUT, checkpoint_name, destroy_quietly

if TYPE_CHECKING:
    from .executor import DagRun


async def race_step(dag: DagRun, s: StepDef) -> dict[str, Any]:
    """Checkpoint the step's vm, fork a vm per candidate from it, race them: the
    winner's vm replaces the step's vm; the losers' vms are destroyed."""
    assert s.race is not None
    sid, ctx = s.id, dag.ctx
    label, key, rerun, done = await dag._begin(s)
    base = checkpoint_name(dag.run_id, sid, "-base")
    keys = [f"{dag.prefix}-{sid}-c{i}" for i in range(len(s.race))]
    outcome: dict[int, str] = {}
    if not done:
        await dag._started(sid, key, 1)

    async def prepare() -> dict[str, Any]:
        restored = await dag._maybe_restore(key) if rerun else None
        await dag.vm(key).resolve()
        return {"restored_from": restored, "checkpoint": await dag.vm(key).checkpoint(base)}

    winner: int | None = None
    started = time.time()
    try:
        prep = await ctx.step(f"fork-base-{sid}", prepare, max_retries=2, timeout=RESTORE_TIMEOUT)
        branches = [
            (f"c{i}", _candidate(dag, s, i, key, base, keys[i], outcome)) for i in range(len(keys))
        ]
        race = await ctx.race(f"race-{sid}", branches)
        winner = int(race.winner[1:])
        value: dict[str, Any] = dict(race.value)
    except (asyncio.CancelledError, HistoryDivergedError):
        raise
    except Exception as exc:
        error = exc

        def fail() -> None:
            raise error

        with contextlib.suppress(StepExhaustedError):
            await ctx.step(f"step-{sid}", fail, max_retries=0)
        return await dag._failed(s, key, exc, 1, started, done)
    finally:
        if not done:
            await destroy_quietly(ctx, [k for i, k in enumerate(keys) if i != winner])

    def assemble() -> dict[str, Any]:
        cands = [
            {"index": i, "vm": k, "status": "won" if i == winner else outcome.get(i, "lost")}
            for i, k in enumerate(keys)
        ]
        finished = time.time()
        out = {
            **value,
            "status": "completed",
            "attempts": 1,
            "started_at": started,
            "finished_at": finished,
            "duration_ms": int((finished - started) * 1000),
            "vm": keys[winner] if winner is not None else key,
            "winner": winner,
            "candidates": cands,
        }
        if prep.get("restored_from"):
            out["restored_from"] = prep["restored_from"]
        return out

    result = await ctx.step(f"step-{sid}", assemble, max_retries=0)
    dag.replaced[label] = result["vm"]
    await dag._use_vm(f"{sid}.winner", result["vm"])
    return await dag._completed(s, key, result, replayed=done)


def _candidate(
    dag: DagRun, s: StepDef, i: int, base_key: str, base: str, key: str, outcome: dict[int, str]
) -> Callable[[WorkflowContext], Awaitable[dict[str, Any]]]:
    assert s.race is not None
    cand = s.race[i]

    async def fork() -> None:
        # A fork from before (a crash, a retried run) is replaced: the candidate
        # starts over from the base checkpoint.
        with contextlib.suppress(ActorNotFound):
            await dag.client.vm.get(key).destroy()
        await dag.vm(base_key).fork(key, {"checkpoint": base})

    async def run() -> dict[str, Any]:
        # One step: a candidate that runs again (a retried run) forks again.
        async with asyncio.timeout(RESTORE_TIMEOUT):
            await fork()
        async with asyncio.timeout(s.timeout):
            return await dag._agent(
                key,
                s,
                cand.prompt or s.prompt,
                cand.system_prompt or s.system_prompt,
                cand.agent_type or s.agent_type,
                cand.model or s.model,
            )

    async def branch(bctx: WorkflowContext) -> dict[str, Any]:
        try:
            out: dict[str, Any] = await bctx.step("run", run, max_retries=0)
        except asyncio.CancelledError:
            outcome[i] = "cancelled"
            raise
        except Exception:
            outcome[i] = "failed"
            raise
        outcome[i] = "completed"
        return out

    return branch
