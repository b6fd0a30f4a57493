"""The engine's guarantees, tested one by one against real SQLite.

Replay, restarts, determinism checks, retries and timeouts, bounded loop
history, durable timers and receive deadlines, at-least-once queue delivery,
sleeping and waking, schedules, broadcasts and ``send(wait=True)``. A restart
is a second engine on the same database file (the ``make_engine`` fixture).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support import eventually

from orchestrator import (
    ActorContext,
    CriticalError,
    Loop,
    StepExhaustedError,
    WorkflowContext,
    actor,
    event,
    queue,
    setup,
    workflow,
)
from orchestrator.errors import EventNotDeclared


def get_state(c: ActorContext) -> Any:
    return c.state


async def settled(h: Any) -> Any:
    """The history once the workflow has finished (completed or failed)."""
    return await eventually(h.history, lambda x: x.workflow_status in ("completed", "failed"))


def by_path(history: Any) -> dict[str, Any]:
    return {e.path: e for e in history.entries}


async def awake(engine: Any, name: str) -> bool:
    infos = await engine.client().list_actors(name)
    return bool(infos and infos[0].awake)


# --- replay and restart ------------------------------------------------------------------


def _two_steps_then_wait(calls: dict[str, int]) -> Any:
    @workflow
    async def run(ctx: WorkflowContext) -> Any:
        def first() -> dict[str, Any]:
            calls["first"] += 1
            return {"items": [1, 2, 3], "label": "first"}

        def second() -> int:
            calls["second"] += 1
            return first_out["items"][-1]

        first_out = await ctx.step("first", first)
        total = await ctx.step("second", second)
        go = await ctx.queue.next("wait-go", names=["go"])

        def third() -> None:
            calls["third"] += 1
            ctx.state["result"] = {"first": first_out, "total": total, "go": go.body}

        await ctx.step("third", third)
        return total

    return setup(
        use={"wf": actor(state={}, queues={"go": queue()}, run=run, actions={"get": get_state})}
    )


async def test_restart_mid_workflow_replays_recorded_steps_without_rerunning(make_engine):
    calls = {"first": 0, "second": 0, "third": 0}
    reg = _two_steps_then_wait(calls)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await eventually(h.history, lambda x: "second" in by_path(x), what="second recorded")
    assert calls == {"first": 1, "second": 1, "third": 0}
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.send("go", {"n": 7})
        hist = await settled(h)
        assert hist.workflow_status == "completed"
        assert hist.output == 3
        # Replay fed the recorded outputs back in; nothing before the wait ran twice.
        assert calls == {"first": 1, "second": 1, "third": 1}
        assert await h.get() == {
            "result": {"first": {"items": [1, 2, 3], "label": "first"}, "total": 3, "go": {"n": 7}}
        }
        assert [e.path for e in hist.entries] == ["first", "second", "wait-go", "third"]
        assert all(e.attempts == 1 for e in hist.entries)


# --- determinism checks ---------------------------------------------------------------


def _versioned_registry(body: Any) -> Any:
    return setup(use={"wf": actor(state={}, queues={"go": queue()}, run=workflow(body))})


async def _v1(ctx: WorkflowContext) -> None:
    await ctx.step("a", lambda: 1)
    await ctx.step("b", lambda: 2)
    await ctx.queue.next("wait-go", names=["go"])


async def test_entry_of_another_type_diverges(make_engine):
    async with make_engine(_versioned_registry(_v1)) as engine:
        h = engine.client().wf.get_or_create("k")
        await eventually(h.history, lambda x: "b" in by_path(x))

    async def v2(ctx: WorkflowContext) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.sleep("b", 0.01)  # was a step

    async with make_engine(_versioned_registry(v2)) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.send("go", {})  # wakes it: it slept at the queue wait when v1 stopped
        hist = await settled(h)
        assert hist.workflow_status == "failed"
        assert hist.error["type"] == "HistoryDivergedError"
        assert hist.error["metadata"]["entry"] == "b"
        assert "'b'" in hist.error["message"] and "step" in hist.error["message"]


async def test_recorded_entry_never_reached_diverges(make_engine):
    async with make_engine(_versioned_registry(_v1)) as engine:
        h = engine.client().wf.get_or_create("k")
        await eventually(h.history, lambda x: "b" in by_path(x))

    async def v2(ctx: WorkflowContext) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.queue.next("wait-go", names=["go"])  # "b" is gone, not declared removed

    async with make_engine(_versioned_registry(v2)) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.send("go", {})
        hist = await settled(h)
        assert hist.error["type"] == "HistoryDivergedError"
        assert hist.error["metadata"]["entry"] == "b"
        assert "never reached" in hist.error["message"]


async def test_duplicate_name_in_one_scope_diverges(make_engine):
    async def body(ctx: WorkflowContext) -> None:
        await ctx.step("same", lambda: 1)
        await ctx.step("same", lambda: 2)

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
        assert hist.workflow_status == "failed"
        assert hist.error["type"] == "HistoryDivergedError"
        assert "duplicate" in hist.error["message"]
        assert hist.error["metadata"]["entry"] == "same"
        # The first one ran and was recorded; the duplicate was refused.
        assert [(e.path, e.output) for e in hist.entries] == [("same", 1)]


# --- retries, critical errors, timeouts, serialisation ------------------------------------


async def test_retries_exhausted_raise_step_exhausted_with_attempts(make_engine):
    calls = {"n": 0}
    seen: dict[str, Any] = {}

    def always_fails() -> None:
        calls["n"] += 1
        raise ValueError(f"attempt {calls['n']} failed")

    async def body(ctx: WorkflowContext) -> None:
        try:
            await ctx.step("flaky", always_fails, max_retries=2, retry_backoff_base=0.001)
        except StepExhaustedError as exc:
            seen.update(exc.metadata)
            raise

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
    assert calls["n"] == 3
    assert seen["attempts"] == 3 and seen["step"] == "flaky" and seen["last_error"] == "ValueError"
    assert hist.workflow_status == "failed"
    assert hist.error["type"] == "StepExhaustedError"
    entry = by_path(hist)["flaky"]
    assert (entry.status, entry.attempts) == ("failed", 3)
    assert entry.error["type"] == "ValueError"
    assert entry.error["message"] == "attempt 3 failed"


async def test_critical_error_is_never_retried(make_engine):
    calls = {"n": 0}

    def fatal() -> None:
        calls["n"] += 1
        raise CriticalError("card permanently declined")

    async def body(ctx: WorkflowContext) -> None:
        await ctx.step("charge", fatal, max_retries=5, retry_backoff_base=0.001)

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
    assert calls["n"] == 1
    assert hist.error["type"] == "CriticalError"
    entry = by_path(hist)["charge"]
    assert (entry.status, entry.attempts) == ("failed", 1)
    assert entry.error["critical"] is True


async def test_retry_backoff_is_durable_across_restart(make_engine):
    calls = {"n": 0}

    def fails_once() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("transient")
        return "ok"

    async def body(ctx: WorkflowContext) -> Any:
        return await ctx.step("call", fails_once, retry_backoff_base=0.4)

    reg = _versioned_registry(body)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(
            h.history, lambda x: getattr(by_path(x).get("call"), "status", "") == "retrying"
        )
        entry = by_path(hist)["call"]
        assert entry.attempts == 1
        assert entry.error["type"] == "ConnectionError"
        retry_at = entry.meta["retry_at"]
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await settled(h)
        entry = by_path(hist)["call"]
        assert (hist.output, entry.status, entry.attempts) == ("ok", "completed", 2)
        # The retry waited for the recorded backoff, not a fresh one.
        assert entry.finished_at >= retry_at
    assert calls["n"] == 2


async def test_step_timeout(make_engine):
    calls = {"n": 0}

    async def hangs() -> None:
        calls["n"] += 1
        await asyncio.sleep(3600)

    async def body(ctx: WorkflowContext) -> None:
        await ctx.step("slow", hangs, timeout=0.02, max_retries=1, retry_backoff_base=0.001)

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
    assert calls["n"] == 2
    assert hist.error["type"] == "StepExhaustedError"
    assert hist.error["metadata"]["last_error"] == "StepTimeoutError"
    entry = by_path(hist)["slow"]
    assert (entry.status, entry.attempts) == ("failed", 2)
    assert entry.error["type"] == "StepTimeoutError"
    assert "'slow'" in entry.error["message"]


async def test_failed_attempt_leaves_no_state_behind(make_engine):
    calls = {"n": 0}

    def bump_then_maybe_fail(ctx: WorkflowContext) -> Any:
        def fn() -> int:
            calls["n"] += 1
            ctx.state["bumps"] += 1
            if calls["n"] == 1:
                raise ConnectionError("transient")
            return ctx.state["bumps"]

        return fn

    async def body(ctx: WorkflowContext) -> Any:
        return await ctx.step("bump", bump_then_maybe_fail(ctx), retry_backoff_base=0.001)

    reg = setup(use={"wf": actor(state={"bumps": 0}, run=workflow(body))})
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await settled(h)
        assert hist.output == 1
        assert await h.fetch_state() == {"bumps": 1}
    assert calls["n"] == 2


async def test_non_json_step_output_fails_naming_the_step(make_engine):
    async def body(ctx: WorkflowContext) -> None:
        await ctx.step("make-socket", lambda: object())

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
    assert hist.error["type"] == "NotSerializable"
    assert "make-socket" in hist.error["message"]
    entry = by_path(hist)["make-socket"]
    assert entry.status == "failed"
    assert "make-socket" in entry.error["message"]


async def test_rollbacks_registered_before_a_restart_still_run_newest_first(make_engine):
    calls: list[str] = []

    def fail() -> None:
        raise CriticalError("nope")

    async def body(ctx: WorkflowContext) -> None:
        await ctx.step("before-checkpoint", lambda: "kept", rollback=lambda c, o: calls.append(o))
        await ctx.rollback_checkpoint("cp")
        for name in ("one", "two"):
            await ctx.step(name, lambda n=name: n, rollback=lambda c, o: calls.append(f"undo-{o}"))
        await ctx.queue.next("wait-go", names=["go"])
        await ctx.step("fail", fail)

    reg = _versioned_registry(body)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await eventually(h.history, lambda x: "two" in by_path(x))
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.send("go", {})
        hist = await settled(h)
    assert hist.error["type"] == "CriticalError"
    # Replay re-registered the handlers; only those after the checkpoint ran.
    assert calls == ["undo-two", "undo-one"]
    statuses = {p: e.status for p, e in by_path(hist).items()}
    assert statuses["one"] == statuses["two"] == "rolled_back"
    assert statuses["before-checkpoint"] == "completed"


async def test_race_survives_restart_and_replays_its_winner(make_engine):
    calls = {"fast": 0, "slow": 0}

    async def fast(b: WorkflowContext) -> str:
        calls["fast"] += 1
        await b.sleep("delay", 0.3)
        return await b.step("finish", lambda: "fast-done")

    async def slow(b: WorkflowContext) -> str:
        calls["slow"] += 1
        await b.sleep("delay", 3600)
        return "slow-done"

    async def body(ctx: WorkflowContext) -> Any:
        result = await ctx.race("first", [("fast", fast), ("slow", slow)])
        await ctx.queue.next("wait-go", names=["go"])
        return [result.winner, result.value]

    reg = _versioned_registry(body)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: "first/fast/delay" in by_path(x))
        wake_at = by_path(hist)["first/fast/delay"].meta["wake_at"]
    # Restarted mid-race: both branches resume from their recorded timers.
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: "first" in by_path(x))
        assert by_path(hist)["first"].output == {"winner": "fast", "value": "fast-done"}
        assert by_path(hist)["first/fast/delay"].meta["wake_at"] == wake_at
        assert by_path(hist)["first/slow/delay"].status == "waiting"
    assert calls == {"fast": 2, "slow": 2}
    # Restarted after the race: the recorded winner is returned, no branch runs.
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.send("go", {})
        hist = await settled(h)
        assert hist.output == ["fast", "fast-done"]
    assert calls == {"fast": 2, "slow": 2}


# --- loops -------------------------------------------------------------------------------


async def test_loop_history_stays_bounded(make_engine):
    iterations = 60

    async def counter(lctx: WorkflowContext, n: int) -> Any:
        await lctx.step("work", lambda: n * 2)
        if n + 1 == iterations:
            return Loop.break_(n + 1)
        return Loop.continue_(n + 1)

    async def body(ctx: WorkflowContext) -> Any:
        return await ctx.loop("count", counter, state=0, history_keep=2)

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
    assert hist.workflow_status == "completed"
    assert hist.output == iterations
    iteration_scopes = {e.path.split("/")[1] for e in hist.entries if e.path.startswith("count/")}
    # Only the last few iterations are kept, however many ran.
    assert len(iteration_scopes) <= 3
    assert f"~{iterations - 1}" in iteration_scopes
    assert len(hist.entries) <= 4
    loop = by_path(hist)["count"]
    assert (loop.status, loop.attempts) == ("completed", iterations)


async def test_loop_resumes_from_its_recorded_iteration_after_restart(make_engine):
    async def item(lctx: WorkflowContext, total: int) -> Any:
        msg = await lctx.queue.next("wait", names=["go"])
        if msg.body == "stop":
            return Loop.break_(total)
        return Loop.continue_(total + msg.body)

    async def body(ctx: WorkflowContext) -> Any:
        return await ctx.loop("sum", item, state=0)

    reg = _versioned_registry(body)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        for n in (1, 2, 3):
            await h.send("go", n)
        await eventually(h.history, lambda x: by_path(x)["sum"].meta["iteration"] == 3)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.send("go", 10)
        await h.send("go", "stop")
        hist = await settled(h)
        assert hist.output == 16


# --- durable timers and receive deadlines --------------------------------------------------


async def test_durable_sleep_fires_after_restart(make_engine):
    async def body(ctx: WorkflowContext) -> None:
        await ctx.sleep("nap", 0.3)
        await ctx.step("after", lambda: ctx.state.update(woke_at=time.time()))

    reg = setup(use={"wf": actor(state={}, run=workflow(body))})
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: "nap" in by_path(x))
        wake_at = by_path(hist)["nap"].meta["wake_at"]
    # Nothing touches the actor after the restart: only its timer can wake it.
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: x.workflow_status == "completed")
        nap = by_path(hist)["nap"]
        assert nap.status == "completed"
        assert nap.meta["wake_at"] == wake_at
        assert (await h.fetch_state())["woke_at"] >= wake_at


async def test_durable_sleep_fires_for_a_sleeping_actor_after_restart(make_engine):
    async def body(ctx: WorkflowContext) -> None:
        await ctx.sleep("nap", 0.5)
        await ctx.step("after", lambda: ctx.state.update(done=True))

    reg = setup(use={"wf": actor(state={}, run=workflow(body))})
    async with make_engine(reg, sleep_timeout=0.01) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.resolve()
        await eventually(lambda: awake(engine, "wf"), lambda a: not a, what="actor asleep")
    async with make_engine(reg, sleep_timeout=0.01) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: x.workflow_status == "completed")
        assert by_path(hist)["nap"].status == "completed"
        assert await h.fetch_state() == {"done": True}


async def test_queue_next_timeout_returns_none_and_deadline_survives_restart(make_engine):
    async def body(ctx: WorkflowContext) -> None:
        msg = await ctx.queue.next("maybe", names=["go"], timeout=0.4)
        await ctx.step("record", lambda: ctx.state.update(got=msg, at=time.time()))

    reg = setup(use={"wf": actor(state={}, queues={"go": queue()}, run=workflow(body))})
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: "maybe" in by_path(x))
        entry = by_path(hist)["maybe"]
        assert entry.status == "waiting"
        deadline = entry.meta["deadline"]
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        hist = await eventually(h.history, lambda x: x.workflow_status == "completed")
        entry = by_path(hist)["maybe"]
        assert entry.status == "completed"
        assert entry.output == []
        state = await h.fetch_state()
        assert state["got"] is None
        # The restart did not restart the clock: the original deadline held.
        assert state["at"] >= deadline


# --- at-least-once delivery ------------------------------------------------------------------


async def test_completable_message_is_not_redelivered_after_restart(make_engine):
    async def item(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("recv", names=["req"], completable=True)
        await lctx.queue.next("wait-go", names=["go"])
        await lctx.step("handle", lambda: lctx.state["handled"].append(msg.id))
        await msg.complete({"ok": msg.body})
        return Loop.continue_()

    async def body(ctx: WorkflowContext) -> None:
        await ctx.loop("serve", item)

    reg = setup(
        use={
            "wf": actor(
                state={"handled": []},
                queues={"req": queue(), "go": queue()},
                run=workflow(body),
            )
        }
    )
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        first = (await h.send("req", "one")).message_id
        await eventually(
            h.history,
            lambda x: getattr(by_path(x).get("serve/~0/recv"), "status", None) == "completed",
        )
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        # Asleep after the restart, the inspector still shows it held by the workflow.
        assert not await awake(engine, "wf")
        assert [(m.message_id, m.in_flight) for m in await h.queue_contents()] == [(first, True)]
        second = (await h.send("req", "two")).message_id
        queued = await h.queue_contents()
        # The first is still held by the workflow that received it before the restart.
        assert [(m.message_id, m.in_flight) for m in queued] == [(first, True), (second, False)]
        await h.send("go", {})
        await h.send("go", {})
        state = await eventually(h.fetch_state, lambda s: len(s["handled"]) == 2)
        # Iteration 1 got the second message, not the first one again.
        assert state["handled"] == [first, second]
        await eventually(h.queue_contents, lambda q: q == [])


async def test_completed_message_answers_a_waiting_sender(make_engine):
    async def item(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("recv", completable=True)
        await msg.complete({"echo": msg.body})
        return Loop.continue_()

    reg = _versioned_registry(lambda ctx: ctx.loop("serve", item))
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        result = await h.send("go", "hi", wait=True, timeout=10)
        assert (result.status, result.response) == ("completed", {"echo": "hi"})


async def test_unacked_message_of_plain_run_handler_is_redelivered(make_engine):
    seen: list[Any] = []

    async def run(c: ActorContext) -> None:
        async for msg in c.queue.iter(names=["jobs"]):
            seen.append(msg.body)
            if len(seen) == 1:
                await asyncio.Event().wait()  # "crash" before acknowledging

    reg = setup(use={"plain": actor(queues={"jobs": queue()}, run=run)})
    async with make_engine(reg) as engine:
        h = engine.client().plain.get_or_create("k")
        await h.send("jobs", {"n": 1})
        await eventually(lambda: _value(len(seen)), lambda n: n == 1)
        assert [m.body for m in await h.queue_contents()] == [{"n": 1}]
    async with make_engine(reg) as engine:
        h = engine.client().plain.get_or_create("k")
        await h.send("jobs", {"n": 2})
        await eventually(lambda: _value(len(seen)), lambda n: n == 3)
        assert seen == [{"n": 1}, {"n": 1}, {"n": 2}]
        # Asking for the next message acknowledged the earlier ones.
        await eventually(h.queue_contents, lambda q: [m.body for m in q] in ([], [{"n": 2}]))
        assert {"n": 1} not in [m.body for m in await h.queue_contents()]


async def _value(v: Any) -> Any:
    return v


async def test_next_batch_records_the_whole_batch(make_engine):
    async def body(ctx: WorkflowContext) -> Any:
        batch = await ctx.queue.next_batch("take", count=3, names=["go"])
        return [m.body for m in batch]

    reg = _versioned_registry(body)
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.resolve()
        for n in range(5):
            await h.send("go", n)
        hist = await settled(h)
        # At least one and at most three, in order; the rest stay queued.
        taken = hist.output
        assert 1 <= len(taken) <= 3 and taken == list(range(len(taken)))
        assert [m.body for m in await h.queue_contents()] == list(range(len(taken), 5))
        assert [m["body"] for m in by_path(hist)["take"].output] == taken


async def test_join_collects_every_branch_failure(make_engine):
    finished: list[str] = []

    async def ok(b: WorkflowContext) -> int:
        await b.sleep("pause", 0.01)
        finished.append("ok")
        return await b.step("value", lambda: 1)

    async def bad(b: WorkflowContext) -> int:
        return await b.step("boom", lambda: 1 / 0, max_retries=0)

    async def body(ctx: WorkflowContext) -> Any:
        return await ctx.join("both", {"ok": ok, "bad": bad})

    async with make_engine(_versioned_registry(body)) as engine:
        hist = await settled(engine.client().wf.get_or_create("k"))
    assert hist.error["type"] == "JoinError"
    assert list(hist.error["metadata"]["branches"]) == ["bad"]
    # The healthy branch ran to the end before the join failed.
    assert finished == ["ok"]
    assert by_path(hist)["both/ok/value"].status == "completed"
    assert by_path(hist)["both/bad/boom"].status == "failed"


async def test_send_wait_timed_out_leaves_message_queued(make_engine):
    reg = setup(use={"idle": actor(queues={"jobs": queue()})})
    async with make_engine(reg) as engine:
        h = engine.client().idle.get_or_create("k")
        result = await h.send("jobs", {"n": 1}, wait=True, timeout=0.05)
        assert result.status == "timed_out"
        assert result.message_id is not None
        queued = await h.queue_contents()
        assert [(m.message_id, m.body, m.in_flight) for m in queued] == [
            (result.message_id, {"n": 1}, False)
        ]


# --- sleeping and waking ----------------------------------------------------------------------


def _sleepy(log: list[str]) -> Any:
    def on_wake(c: ActorContext) -> None:
        log.append("wake")

    def on_sleep(c: ActorContext) -> None:
        log.append("sleep")

    def bump(c: ActorContext) -> dict[str, int]:
        c.vars["n"] += 1
        c.state["calls"] += 1
        return {"var": c.vars["n"], "calls": c.state["calls"]}

    def mark(c: ActorContext, label: str) -> None:
        c.state["marks"].append(label)

    async def later(c: ActorContext, delay: float, label: str) -> None:
        await c.schedule.after(delay, "mark", label)

    async def run(c: ActorContext) -> None:
        async for msg in c.queue.iter(names=["inbox"]):
            await c.actors.sleepy.get_or_create(c.key).mark(f"msg:{msg.body}")

    return setup(
        use={
            "sleepy": actor(
                state={"calls": 0, "marks": []},
                vars={"n": 0},
                queues={"inbox": queue()},
                on_wake=on_wake,
                on_sleep=on_sleep,
                run=run,
                actions={"bump": bump, "mark": mark, "later": later},
            )
        }
    )


async def test_idle_actor_sleeps_and_wakes_on_action_with_fresh_vars(make_engine):
    log: list[str] = []
    async with make_engine(_sleepy(log), sleep_timeout=0.02) as engine:
        h = engine.client().sleepy.get_or_create("k")
        assert await h.bump() == {"var": 1, "calls": 1}
        await eventually(lambda: awake(engine, "sleepy"), lambda a: not a, what="asleep")
        assert log == ["wake", "sleep"]
        # Waking again: state was kept, vars started over, on_wake ran again.
        assert await h.bump() == {"var": 1, "calls": 2}
        assert log[:3] == ["wake", "sleep", "wake"]


async def test_sleeping_actor_wakes_on_message(make_engine):
    log: list[str] = []
    async with make_engine(_sleepy(log), sleep_timeout=0.02) as engine:
        h = engine.client().sleepy.get_or_create("k")
        await h.resolve()
        await eventually(lambda: awake(engine, "sleepy"), lambda a: not a, what="asleep")
        await h.send("inbox", "hello")
        state = await eventually(h.fetch_state, lambda s: s["marks"])
        assert state["marks"] == ["msg:hello"]
        assert log.count("wake") >= 2


async def test_sleeping_actor_wakes_on_schedule_and_schedule_survives_restart(make_engine):
    log: list[str] = []
    reg = _sleepy(log)
    async with make_engine(reg, sleep_timeout=0.02) as engine:
        h = engine.client().sleepy.get_or_create("k")
        await h.later(0.2, "soon")
        await h.later(1.0, "after-restart")
        await eventually(h.fetch_state, lambda s: "soon" in s["marks"])
        # It slept after scheduling, and the schedule woke it.
        assert log[:3] == ["wake", "sleep", "wake"]
    async with make_engine(reg, sleep_timeout=0.02) as engine:
        h = engine.client().sleepy.get_or_create("k")
        state = await eventually(h.fetch_state, lambda s: len(s["marks"]) == 2)
        assert state["marks"] == ["soon", "after-restart"]
        # Fired schedules are gone: nothing fires a second time.
        assert await engine.store.load_schedules() == []


async def test_workflow_timer_wakes_a_sleeping_actor(make_engine):
    log: list[str] = []

    async def body(ctx: WorkflowContext) -> None:
        await ctx.sleep("nap", 0.5)
        await ctx.step("after", lambda: ctx.state.update(done=True))

    reg = setup(
        use={
            "wf": actor(
                state={},
                run=workflow(body),
                on_wake=lambda c: log.append("wake"),
                on_sleep=lambda c: log.append("sleep"),
            )
        }
    )
    async with make_engine(reg, sleep_timeout=0.01) as engine:
        h = engine.client().wf.get_or_create("k")
        await h.resolve()
        await eventually(lambda: awake(engine, "wf"), lambda a: not a, what="asleep")
        await eventually(h.history, lambda x: x.workflow_status == "completed")
        assert await h.fetch_state() == {"done": True}
        assert log[:3] == ["wake", "sleep", "wake"]


# --- broadcasts -----------------------------------------------------------------------------------


async def test_broadcast_reaches_every_subscriber_with_filters(make_engine):
    def announce(c: ActorContext, text: str) -> None:
        c.broadcast("news", {"text": text})
        c.broadcast("noise", text)

    def bad(c: ActorContext) -> None:
        c.broadcast("undeclared", 1)

    reg = setup(
        use={
            "radio": actor(
                events={"news": event(), "noise": event()},
                actions={"announce": announce, "bad": bad},
            )
        }
    )
    async with make_engine(reg) as engine:
        h = engine.client().radio.get_or_create("k")
        everything = await h.connect()
        news_only = await h.connect(["news"])
        await h.announce("hello")
        await h.announce("again")
        got_all = [(e.name, e.payload) for e in [await everything.next(5) for _ in range(4)]]
        got_news = [e.payload for e in [await news_only.next(5) for _ in range(2)]]
        assert got_all == [
            ("news", {"text": "hello"}),
            ("noise", "hello"),
            ("news", {"text": "again"}),
            ("noise", "again"),
        ]
        assert got_news == [{"text": "hello"}, {"text": "again"}]
        with pytest.raises(EventNotDeclared):
            await h.bad()
        await news_only.close()
        await h.announce("third")
        assert (await everything.next(5)).payload == {"text": "third"}
        await everything.close()
        assert [e async for e in news_only] == []
