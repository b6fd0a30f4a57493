"""Every workflow example of seed 001, run for real, with assertions on the outcome.

The actors live in ``examples/workflows.py``; each test drives one of them the
way a client would and checks the resulting state (and history, where the
history is the point).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from support import eventually

from examples import workflows as ex


def state_of(handle: Any) -> Any:
    """A probe for ``eventually``: the actor's last committed state."""
    return handle.fetch_state


def entries(history: Any, prefix: str = "") -> dict[str, Any]:
    return {e.path: e for e in history.entries if e.path.startswith(prefix)}


# --- getting started -------------------------------------------------------------------


async def test_simple_invoice(make_engine):
    async with make_engine(ex.simple_invoice()) as engine:
        h = engine.client().invoice.get_or_create(["main"])
        await h.resolve()
        await eventually(
            h.history, lambda hist: hist.workflow_status == "completed", what="invoice done"
        )
        assert await h.get_state() == {
            "subtotal": 100,
            "tax": 10,
            "total": 110,
            "status": "complete",
        }
        hist = await h.history()
        assert [e.path for e in hist.entries] == ["load-subtotal", "calculate-tax", "save-invoice"]
        assert all(e.status == "completed" and e.attempts == 1 for e in hist.entries)
        assert entries(hist)["calculate-tax"].output == 10


async def test_counter_loop(make_engine):
    async with make_engine(ex.counter_loop()) as engine:
        h = engine.client().counter.get_or_create(["main"])
        await h.send("counter", {"delta": 1})
        await h.send("counter", {"delta": 2})
        state = await eventually(state_of(h), lambda s: s["processed"] == 2)
        assert state == {"value": 3, "processed": 2}
        assert await h.queue_contents() == []


async def test_setup_work_teardown(make_engine):
    async with make_engine(ex.setup_work_teardown()) as engine:
        h = engine.client().worker.get_or_create(["main"])
        await h.send("work", {"amount": 5})
        await h.send("work", {"amount": 3})
        await h.send("control", {"type": "stop", "reason": "maintenance"})
        await eventually(h.history, lambda hist: hist.workflow_status == "completed")
        assert await h.get_state() == {
            "phase": "stopped",
            "total": 8,
            "processed": 2,
            "stop_reason": "maintenance",
        }
        hist = await h.history()
        assert entries(hist)["worker-loop"].output == "maintenance"
        assert entries(hist)["teardown"].status == "completed"


# --- features ----------------------------------------------------------------------------


async def test_request_response(make_engine):
    async with make_engine(ex.request_response()) as engine:
        h = engine.client().doubler.get_or_create(["main"])
        result = await h.send("requests", {"value": 21}, wait=True, timeout=10)
        assert result.status == "completed"
        assert result.response == {"doubled": 42}
        result = await h.send("requests", {"value": 5}, wait=True, timeout=10)
        assert result.response == {"doubled": 10}
        assert await h.get_state() == {"handled": 2}
        assert await h.queue_contents() == []


async def test_reminder_timer(make_engine):
    async with make_engine(ex.reminders()) as engine:
        h = engine.client().reminder.get_or_create(["main"])
        due = time.time() + 0.1
        await h.send("reminders", {"text": "send weekly report", "at": due})
        state = await eventually(state_of(h), lambda s: s["fired"])
        assert state["fired"] == ["send weekly report"]
        # The durable sleep recorded when it was due and fired no earlier.
        sleep = next(e for e in (await h.history()).entries if e.kind == "sleep")
        assert sleep.meta["wake_at"] == pytest.approx(due)
        assert sleep.finished_at >= due


async def test_dashboard_join(make_engine):
    async with make_engine(ex.dashboard()) as engine:
        h = engine.client().dashboard.get_or_create(["main"])
        await h.send("refresh", {})
        state = await eventually(state_of(h), lambda s: s["refreshes"] == 1)
        assert state["summary"] == {"users": 42, "orders": 12, "revenue": 9_900}
        hist = entries(await h.history(), "dashboard-loop/~0/")
        assert hist["dashboard-loop/~0/fetch-summary"].kind == "join"
        for branch, step in (("users", "fetch-users"), ("orders", "fetch-orders")):
            assert hist[f"dashboard-loop/~0/fetch-summary/{branch}/{step}"].status == "completed"


async def test_race_work_beats_timeout(make_engine):
    async with make_engine(ex.race_work_vs_timeout(timeout_delay=30)) as engine:
        h = engine.client().racer.get_or_create(["main"])
        await h.send("start", {})
        state = await eventually(state_of(h), lambda s: s["last_winner"])
        assert state == {"last_winner": "work", "last_value": "work-complete"}
        hist = entries(await h.history(), "race-loop/~0/")
        assert hist["race-loop/~0/work-vs-timeout"].output == {
            "winner": "work",
            "value": "work-complete",
        }
        # The loser was cancelled: its timer never completed.
        assert hist["race-loop/~0/work-vs-timeout/timeout/timeout-delay"].status == "waiting"


async def test_race_timeout_beats_work(make_engine):
    async with make_engine(ex.race_work_vs_timeout(timeout_delay=0.02)) as engine:
        h = engine.client().racer.get_or_create(["main"])
        await h.send("start", {"work_delay": 30})
        state = await eventually(state_of(h), lambda s: s["last_winner"])
        assert state == {"last_winner": "timeout", "last_value": "timed-out"}
        hist = entries(await h.history(), "race-loop/~0/work-vs-timeout/")
        assert "race-loop/~0/work-vs-timeout/work/finish-work" not in hist


async def test_flaky_step_retries_then_succeeds(make_engine):
    async with make_engine(ex.flaky_charge(failures=2)) as engine:
        h = engine.client().charger.get_or_create(["main"])
        await h.send("charge", {"order_id": "o-1"})
        state = await eventually(state_of(h), lambda s: s["last_charge_id"])
        assert state == {"last_charge_id": "charge-o-1"}
        step = entries(await h.history())["charge-loop/~0/charge-card"]
        assert step.status == "completed"
        assert step.attempts == 3
        assert step.output == "charge-o-1"


async def test_checkout_rollback_releases_reservation(make_engine):
    async with make_engine(ex.checkout_with_rollback()) as engine:
        h = engine.client().checkout.get_or_create(["main"])
        await h.send("checkout", {"order_id": "ok-1"})
        state = await eventually(state_of(h), lambda s: s["last_order_id"] == "ok-1")
        assert state["last_reservation_id"] == "reservation-ok-1"
        assert state["last_charge_id"] == "charge-ok-1"

        await h.send("checkout", {"order_id": "bad-2", "declined": True})
        hist = await eventually(h.history, lambda x: x.workflow_status == "failed")
        assert hist.error["type"] == "CriticalError"
        assert "bad-2" in hist.error["message"]
        state = await h.get_state()
        # Only the reservation made after this order's checkpoint is released;
        # the first order's is kept, and no charge happened to refund.
        assert state["released"] == ["reservation-bad-2"]
        assert state["reserved"] == ["reservation-ok-1"]
        assert state["refunded"] == []
        assert entries(hist)["checkout-loop/~1/reserve-inventory"].status == "rolled_back"
        assert entries(hist)["checkout-loop/~1/charge-card"].status == "failed"


# --- patterns ------------------------------------------------------------------------------


async def test_progress_broadcast(make_engine):
    async with make_engine(ex.progress_broadcast()) as engine:
        h = engine.client().progress.get_or_create(["main"])
        sub = await h.connect(["progress_updated"])
        try:
            await h.send("jobs", {"value": 5})
            await h.send("jobs", {"value": 7})
            seen = [(await sub.next(10)).payload for _ in range(4)]
        finally:
            await sub.close()
        assert seen == [
            {"stage": "running", "completed": 0, "total": 1},
            {"stage": "completed", "completed": 1, "total": 1},
            {"stage": "running", "completed": 1, "total": 2},
            {"stage": "completed", "completed": 2, "total": 2},
        ]
        state = await h.get_state()
        assert state == {"progress": seen[-1], "sum": 12}


async def test_cron_via_schedule(make_engine):
    interval = 0.05
    async with make_engine(ex.cron(interval=interval)) as engine:
        h = engine.client().cron.get_or_create(["main"])
        state = await eventually(state_of(h), lambda s: s["runs"] >= 3)
        times = state["run_times"][:3]
        # One tick per interval boundary, in order, none skipped or repeated.
        assert all(t == pytest.approx(round(t / interval) * interval) for t in times)
        assert [round((b - a) / interval) for a, b in itertools.pairwise(times)] == [1, 1]
        assert state["last_run_at"] == state["run_times"][-1]


async def test_queue_worker(make_engine):
    async with make_engine(ex.queue_worker()) as engine:
        h = engine.client().queue_worker.get_or_create(["main"])
        for i in range(5):
            await h.send("jobs", {"id": f"job-{i}", "amount": i * 10})
        state = await eventually(state_of(h), lambda s: s["processed"] == 5)
        assert state == {"processed": 5, "total_amount": 100}


async def test_resource_lifecycle_across_sleeps(make_engine):
    log: list[str] = []
    reg = ex.resource_lifecycle(tick=0.2, log=log)
    async with make_engine(reg, sleep_timeout=0.02) as engine:
        h = engine.client().ticker.get_or_create(["main"])
        await h.resolve()
        # Between ticks the actor sleeps (resource closed) and the timer wakes it.
        state = await eventually(state_of(h), lambda s: s["ticks"] >= 2, timeout=20)
        assert state["initialized"] is True
        await eventually(lambda: _async(list(log)), lambda xs: xs.count("close") >= 1)
    assert log[0] == "open"
    # Opens and closes alternate: every sleep closed what the wake opened.
    assert all(a != b for a, b in itertools.pairwise(log))
    assert log.count("open") >= 2


async def _async(value: Any) -> Any:
    return value


async def test_approval_gate(make_engine):
    async with make_engine(ex.approval_gate()) as engine:
        h = engine.client().approval.get_or_create(["main"])
        state = await eventually(state_of(h), lambda s: s["pending_request_id"] == "req-1")
        assert state["last_decision"] is None
        await h.send("approvals", {"request_id": "req-1", "approved": True})
        state = await eventually(state_of(h), lambda s: s["last_decision"] is not None)
        assert state == {"pending_request_id": "req-1", "last_decision": "approved"}
        await h.send("approvals", {"request_id": "req-2", "approved": False})
        state = await eventually(state_of(h), lambda s: s["pending_request_id"] == "req-2")
        assert state["last_decision"] == "rejected"


async def test_fan_out_fan_in(make_engine):
    async with make_engine(ex.fan_out_fan_in()) as engine:
        h = engine.client().fan_in.get_or_create(["main"])
        await h.send("refresh", {})
        state = await eventually(state_of(h), lambda s: s["total"])
        assert state == {"total": 12 + 34 + 56}
        join = entries(await h.history())["join-loop/~0/parallel-work"]
        assert join.output == {"users": 12, "orders": 34, "invoices": 56}


async def test_batch_drainer(make_engine):
    async with make_engine(ex.batch_drainer(batch_size=5)) as engine:
        h = engine.client().drainer.get_or_create(["main"])
        for v in range(1, 13):
            await h.send("metrics", {"value": v})
        state = await eventually(
            state_of(h), lambda s: s["flushed_batches"] == 2 and len(s["pending"]) == 2
        )
        assert state["last_batch_total"] == 6 + 7 + 8 + 9 + 10
        assert state["pending"] == [11, 12]


async def test_coordinator_worker_rpc(make_engine):
    async with make_engine(ex.coordinator_worker_rpc()) as engine:
        c = engine.client()
        h = c.coordinator.get_or_create(["main"])
        await h.send("tasks", {"task_id": "t-1", "worker_id": "w-1", "value": 21})
        await h.send("tasks", {"task_id": "t-2", "worker_id": "w-2", "value": 4})
        state = await eventually(state_of(h), lambda s: s["last_task_id"] == "t-2")
        assert state["last_result"] == 8
        assert await c.task_worker.get("w-1").get_state() == {"tasks": 1}
        assert await c.task_worker.get("w-2").get_state() == {"tasks": 1}


async def test_request_response_between_actors(make_engine):
    async with make_engine(ex.queue_rpc()) as engine:
        c = engine.client()
        caller = c.caller.get_or_create(["main"])
        await caller.ask(21)
        await caller.ask(4)
        state = await eventually(state_of(caller), lambda s: len(s["answers"]) == 2)
        assert state["answers"] == [42, 8]
        responder = c.responder.get("main")
        assert await responder.get_state() == {"handled": 2}
        assert await responder.queue_contents() == []


async def test_scatter_gather(make_engine):
    async with make_engine(ex.scatter_gather()) as engine:
        h = engine.client().scatter.get_or_create(["main"])
        await h.send("scatter", {"input": 7})
        state = await eventually(state_of(h), lambda s: s["last_sum"])
        assert state == {"last_sum": 210}
        hist = entries(await h.history(), "scatter-gather-loop/~0/gather")
        assert hist["scatter-gather-loop/~0/gather"].output == {
            "shard_a": 70,
            "shard_b": 70,
            "shard_c": 70,
        }
        names = {a.key[0] for a in await engine.client().list_actors("shard")}
        assert names == {"a", "b", "c"}


async def test_timeout_fallback_uses_fallback_when_primary_is_slow(make_engine):
    async with make_engine(ex.timeout_fallback(primary_delay=30, budget=0.05)) as engine:
        h = engine.client().frontend.get_or_create(["main"])
        await h.send("requests", {})
        state = await eventually(state_of(h), lambda s: s["last_source"] != "none")
        assert state == {"last_source": "fallback", "last_value": "fallback"}
        race = entries(await h.history())["timeout-loop/~0/primary-vs-timeout"]
        assert race.output == {"winner": "timeout", "value": "timeout"}


async def test_timeout_fallback_uses_primary_when_fast(make_engine):
    async with make_engine(ex.timeout_fallback(primary_delay=0, budget=30)) as engine:
        h = engine.client().frontend.get_or_create(["main"])
        await h.send("requests", {})
        state = await eventually(state_of(h), lambda s: s["last_source"] != "none")
        assert state == {"last_source": "primary", "last_value": "primary"}
        hist = entries(await h.history())
        assert "timeout-loop/~0/fallback-call" not in hist


async def test_cross_actor_saga_compensates_in_reverse(make_engine):
    async with make_engine(ex.checkout_saga()) as engine:
        c = engine.client()
        h = c.saga.get_or_create(["main"])
        await h.send("orders", {"order_id": "o-1", "amount": 30})
        await eventually(state_of(h), lambda s: s["completed_orders"] == 1)
        await h.send("orders", {"order_id": "o-2", "amount": 50, "ship_fails": True})
        hist = await eventually(h.history, lambda x: x.workflow_status == "failed")
        assert "o-2" in hist.error["message"]
        state = await h.get_state()
        # Newest first: the charge is refunded before the reservation is released.
        assert state["compensations"] == ["refund:charge-50", "release:reserve-o-2"]
        assert state["completed_orders"] == 1
        # The other actors are back to the state the first (completed) order left.
        assert await c.inventory.get("main").get_state() == {"reserved": ["o-1"]}
        assert await c.billing.get("main").get_state() == {"balance": 30}
        e = entries(hist, "checkout-loop/~1/")
        assert e["checkout-loop/~1/charge-card"].status == "rolled_back"
        assert e["checkout-loop/~1/reserve-inventory"].status == "rolled_back"
        assert e["checkout-loop/~1/ship-order"].status == "failed"
        assert e["checkout-loop/~1/ship-order"].attempts == 1


async def test_signal_driven_control_loop(make_engine):
    async with make_engine(ex.control_loop()) as engine:
        h = engine.client().controller.get_or_create(["main"])
        await h.send("signals", {"kind": "pause"})
        state = await eventually(state_of(h), lambda s: s["handled_signals"] == 1)
        assert state["mode"] == "paused"
        await h.send("signals", {"kind": "resume"})
        await h.send("signals", {"kind": "stop"})
        state = await eventually(state_of(h), lambda s: s["handled_signals"] == 3)
        assert state["mode"] == "stopped"


async def test_poll_with_backoff(make_engine):
    reg = ex.poll_with_backoff(base=0.01, cap=0.03, healthy_interval=30)
    async with make_engine(reg) as engine:
        h = engine.client().poller.get_or_create(["main"])
        state = await eventually(state_of(h), lambda s: s["status"] == "healthy")
        # Two failures doubled the delay (capped), the third poll succeeded and reset it.
        assert state == {
            "attempts": 3,
            "backoff": 0.01,
            "status": "healthy",
            "delays": [0.02, 0.03],
        }


async def test_child_worker_orchestration(make_engine):
    async with make_engine(ex.child_workers()) as engine:
        c = engine.client()
        h = c.parent.get_or_create(["main"])
        await h.send("batches", {"payload": 2})
        state = await eventually(state_of(h), lambda s: s["last_total"])
        assert state == {"last_total": 18}
        await h.send("batches", {"payload": 5})
        state = await eventually(state_of(h), lambda s: s["last_total"] == 45)
        for key in ("child-a", "child-b", "child-c"):
            # One start call plus one per batch.
            assert await c.child.get(key).get_state() == {"calls": 3}


async def test_bounded_drain(make_engine):
    async with make_engine(ex.bounded_drain(max_per_iteration=10, concurrency=3)) as engine:
        h = engine.client().bounded.get_or_create(["main"])
        # Queue the whole spike before the actor can look, so windows are full.
        await h.resolve()
        for i in range(25):
            await h.send("work", {"id": f"w-{i}", "value": i})
        state = await eventually(state_of(h), lambda s: s["processed"] == 25)
        assert sum(state["windows"]) == 25
        assert max(state["windows"]) <= 10
        assert 1 <= state["peak"] <= 3
        assert await h.queue_contents() == []


async def test_versioned_evolution_replays_with_removed(make_engine):
    async with make_engine(ex.versioned(1)) as engine:
        h = engine.client().versioned.get_or_create(["main"])
        await h.send("tick", {})
        await eventually(state_of(h), lambda s: s["heartbeats"] == ["v1"])
    # Deploy v2 on the same database: v1's history replays, the removed step is skipped.
    async with make_engine(ex.versioned(2)) as engine:
        h = engine.client().versioned.get_or_create(["main"])
        await h.send("tick", {})
        await eventually(state_of(h), lambda s: len(s["heartbeats"]) == 2)
        await h.send("stop", {})
        hist = await eventually(h.history, lambda x: x.workflow_status != "running")
        assert hist.workflow_status == "completed", hist.error
        state = await h.get_state()
        assert state["validated_by"] == ["v1", "v2"]
        assert state["heartbeats"] == ["v1", "v2"]
        # The loop resumed where v1 left it rather than starting over.
        assert hist.output == 4
        assert entries(hist)["validate-v1"].kind == "step"


async def test_versioned_evolution_without_removed_diverges(make_engine):
    async with make_engine(ex.versioned(1)) as engine:
        h = engine.client().versioned.get_or_create(["main"])
        await h.send("tick", {})
        await eventually(state_of(h), lambda s: s["heartbeats"] == ["v1"])
    async with make_engine(ex.versioned(2, declare_removed=False)) as engine:
        h = engine.client().versioned.get_or_create(["main"])
        await h.send("stop", {})
        hist = await eventually(h.history, lambda x: x.workflow_status == "failed")
        assert hist.error["type"] == "HistoryDivergedError"
        assert "validate-v1" in hist.error["message"]


async def test_checkpoint_friendly_loop_survives_restart(make_engine):
    log: list[str] = []
    reg = ex.checkpoint_friendly(log)
    async with make_engine(reg) as engine:
        h = engine.client().payments.get_or_create(["main"])
        await h.send("payments", {"id": "p-1", "amount": 10})
        await h.send("payments", {"id": "p-2", "amount": 15})
        await eventually(state_of(h), lambda s: s["applied_count"] == 2)
    async with make_engine(reg) as engine:
        h = engine.client().payments.get_or_create(["main"])
        await h.send("payments", {"id": "p-3", "amount": 5})
        state = await eventually(state_of(h), lambda s: s["applied_count"] == 3)
        assert state == {"applied_count": 3, "total_amount": 30, "last_payment_id": "p-3"}
    # Replay after the restart did not apply any payment twice.
    assert log == ["p-1", "p-2", "p-3"]
