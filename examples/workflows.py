"""Workflow patterns, one function per pattern, each returning a ready registry.

Every function builds fresh actor definitions, so tests can run them side by side
and a few take knobs (intervals, a list to log side effects into) to stay fast
and observable. Durations are seconds. The actor names inside each registry are
the ones the docstring mentions; every actor that keeps state has a
``get_state`` action.

Conventions used throughout:

* actor state changes and calls to other actors happen inside ``ctx.step(...)``;
* workflow code between steps only orchestrates (queue waits, sleeps, loops,
  joins, races, rollback checkpoints);
* entry names are unique within one scope (a loop iteration is its own scope).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from orchestrator import (
    ActorContext,
    CriticalError,
    Loop,
    Registry,
    WorkflowContext,
    actor,
    event,
    queue,
    setup,
    workflow,
)


def _get_state(c: ActorContext) -> Any:
    return c.state


# --- getting started -------------------------------------------------------------------


def simple_invoice() -> Registry:
    """``invoice``: a short three-step sequence that fills in an invoice once."""

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        subtotal = await ctx.step("load-subtotal", lambda: 100)
        tax = await ctx.step("calculate-tax", lambda: round(subtotal * 0.1))

        def save() -> None:
            ctx.state.update(subtotal=subtotal, tax=tax, total=subtotal + tax, status="complete")

        await ctx.step("save-invoice", save)

    invoice = actor(
        state={"subtotal": 0, "tax": 0, "total": 0, "status": "idle"},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"invoice": invoice})


def counter_loop() -> Registry:
    """``counter``: the recommended shape — one endless loop fed by a queue."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-counter-command")
        if msg is None:
            return Loop.continue_()

        def apply() -> None:
            lctx.state["value"] += msg.body["delta"]
            lctx.state["processed"] += 1

        await lctx.step("apply-counter-command", apply)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("counter-loop", body)

    counter = actor(
        state={"value": 0, "processed": 0},
        queues={"counter": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"counter": counter})


def setup_work_teardown() -> Registry:
    """``worker``: set up, process ``work`` until a ``control`` stop, then tear down."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-command", names=["work", "control"])
        if msg is None:
            return Loop.continue_()
        if msg.name == "work":

            def apply() -> None:
                lctx.state["total"] += msg.body["amount"]
                lctx.state["processed"] += 1

            await lctx.step("apply-work", apply)
            return Loop.continue_()
        if msg.body.get("type") == "stop":
            return Loop.break_(msg.body["reason"])
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        def start() -> None:
            ctx.state["phase"] = "running"
            ctx.state["stop_reason"] = None

        await ctx.step("setup", start)
        reason = await ctx.loop("worker-loop", body)

        def stop() -> None:
            ctx.state["phase"] = "stopped"
            ctx.state["stop_reason"] = reason

        await ctx.step("teardown", stop)

    worker = actor(
        state={"phase": "idle", "total": 0, "processed": 0, "stop_reason": None},
        queues={"work": queue(), "control": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"worker": worker})


# --- features ----------------------------------------------------------------------------


def request_response() -> Registry:
    """``doubler``: answers each completable ``requests`` message with ``{"doubled": ...}``."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-request", names=["requests"], completable=True)
        if msg is None:
            return Loop.continue_()

        def handle() -> int:
            lctx.state["handled"] += 1
            return msg.body["value"] * 2

        doubled = await lctx.step("handle-request", handle)
        await msg.complete({"doubled": doubled})
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("request-loop", body)

    doubler = actor(
        state={"handled": 0},
        queues={"requests": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"doubler": doubler})


def reminders() -> Registry:
    """``reminder``: each message names a time; a durable sleep waits for it, then records."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-reminder", names=["reminders"])
        if msg is None:
            return Loop.continue_()
        await lctx.sleep_until("wait-until-reminder", max(time.time(), msg.body["at"]))

        def record() -> None:
            lctx.state["fired"].append(msg.body["text"])

        await lctx.step("record-reminder", record)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("reminder-loop", body)

    reminder = actor(
        state={"fired": []},
        queues={"reminders": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"reminder": reminder})


def dashboard() -> Registry:
    """``dashboard``: on each ``refresh``, fetch three figures in parallel (join) and save."""

    async def body(lctx: WorkflowContext) -> Any:
        await lctx.queue.next("wait-refresh", names=["refresh"])

        async def users(b: WorkflowContext) -> int:
            return await b.step("fetch-users", lambda: 42)

        async def orders(b: WorkflowContext) -> int:
            return await b.step("fetch-orders", lambda: 12)

        async def revenue(b: WorkflowContext) -> int:
            return await b.step("fetch-revenue", lambda: 9_900)

        summary = await lctx.join(
            "fetch-summary", {"users": users, "orders": orders, "revenue": revenue}
        )

        def save() -> None:
            lctx.state["summary"] = summary
            lctx.state["refreshes"] += 1

        await lctx.step("save-summary", save)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("dashboard-loop", body)

    board = actor(
        state={"summary": None, "refreshes": 0},
        queues={"refresh": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"dashboard": board})


def race_work_vs_timeout(work_delay: float = 0.02, timeout_delay: float = 30.0) -> Registry:
    """``racer``: on each ``start``, race some work against a timeout; record the winner."""

    async def body(lctx: WorkflowContext) -> Any:
        start = await lctx.queue.next("wait-start", names=["start"])
        delay = (start.body or {}).get("work_delay", work_delay) if start else work_delay

        async def work(b: WorkflowContext) -> str:
            await b.sleep("work-delay", delay)
            return await b.step("finish-work", lambda: "work-complete")

        async def timeout(b: WorkflowContext) -> str:
            await b.sleep("timeout-delay", timeout_delay)
            return "timed-out"

        result = await lctx.race("work-vs-timeout", [("work", work), ("timeout", timeout)])

        def record() -> None:
            lctx.state["last_winner"] = result.winner
            lctx.state["last_value"] = result.value

        await lctx.step("record-result", record)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("race-loop", body)

    racer = actor(
        state={"last_winner": None, "last_value": None},
        queues={"start": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"racer": racer})


def flaky_charge(failures: int = 2) -> Registry:
    """``charger``: a card charge behind a step timeout and retries with backoff.

    The fake payment service fails the first ``failures`` calls, so the step
    succeeds on attempt ``failures + 1`` (within ``max_retries=5``).
    """
    calls = {"n": 0}

    async def charge_card(order_id: str) -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError(f"payment service unavailable (call {calls['n']})")
        return f"charge-{order_id}"

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-charge", names=["charge"])
        if msg is None:
            return Loop.continue_()
        charge_id = await lctx.step(
            "charge-card",
            lambda: charge_card(msg.body["order_id"]),
            timeout=5,
            max_retries=5,
            retry_backoff_base=0.01,
            retry_backoff_max=0.05,
        )

        def save() -> None:
            lctx.state["last_charge_id"] = charge_id

        await lctx.step("save-charge", save)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("charge-loop", body)

    charger = actor(
        state={"last_charge_id": None},
        queues={"charge": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"charger": charger})


def checkout_with_rollback() -> Registry:
    """``checkout``: reserve, then charge; a declined charge releases the reservation.

    Orders with ``"declined": true`` make the charge fail with a
    :class:`CriticalError`; the workflow then fails and the rollback handlers of
    the steps after ``checkout-checkpoint`` run, newest first.
    """

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-checkout", names=["checkout"])
        if msg is None:
            return Loop.continue_()
        order = msg.body
        await lctx.rollback_checkpoint("checkout-checkpoint")

        def reserve() -> str:
            lctx.state["reserved"].append(f"reservation-{order['order_id']}")
            return f"reservation-{order['order_id']}"

        def release(rctx: WorkflowContext, reservation_id: str) -> None:
            rctx.state["reserved"].remove(reservation_id)
            rctx.state["released"].append(reservation_id)

        reservation_id = await lctx.step("reserve-inventory", reserve, rollback=release)

        def charge() -> str:
            if order.get("declined"):
                raise CriticalError(f"card declined for {order['order_id']}")
            return f"charge-{order['order_id']}"

        def refund(rctx: WorkflowContext, charge_id: str) -> None:
            rctx.state["refunded"].append(charge_id)

        charge_id = await lctx.step("charge-card", charge, rollback=refund)

        def complete() -> None:
            lctx.state["last_order_id"] = order["order_id"]
            lctx.state["last_reservation_id"] = reservation_id
            lctx.state["last_charge_id"] = charge_id

        await lctx.step("mark-complete", complete)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("checkout-loop", body)

    checkout = actor(
        state={
            "last_order_id": None,
            "last_reservation_id": None,
            "last_charge_id": None,
            "reserved": [],
            "released": [],
            "refunded": [],
        },
        queues={"checkout": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"checkout": checkout})


# --- patterns ------------------------------------------------------------------------------


def progress_broadcast() -> Registry:
    """``progress``: progress lives in state and each change is broadcast to subscribers."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-job", names=["jobs"])
        if msg is None:
            return Loop.continue_()

        def mark_running() -> None:
            p = lctx.state["progress"]
            lctx.state["progress"] = {**p, "stage": "running", "total": p["total"] + 1}
            lctx.broadcast("progress_updated", lctx.state["progress"])

        def apply_job() -> None:
            p = lctx.state["progress"]
            lctx.state["sum"] += msg.body["value"]
            lctx.state["progress"] = {**p, "stage": "completed", "completed": p["completed"] + 1}
            lctx.broadcast("progress_updated", lctx.state["progress"])

        await lctx.step("mark-running", mark_running)
        await lctx.step("apply-job", apply_job)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("progress-loop", body)

    progress = actor(
        state={"progress": {"stage": "idle", "completed": 0, "total": 0}, "sum": 0},
        events={"progress_updated": event()},
        queues={"jobs": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"progress": progress})


def cron(interval: float = 60.0) -> Registry:
    """``cron``: a scheduled action enqueues a tick every ``interval`` seconds (aligned
    to multiples of it); the workflow loop does the job for each tick."""

    def next_tick(ts: float) -> float:
        return math.floor(ts / interval) * interval + interval

    async def on_create(c: ActorContext, _input: Any) -> None:
        first = next_tick(time.time())
        await c.schedule.at(first, "enqueue_cron_tick", first)

    async def enqueue_cron_tick(c: ActorContext, scheduled_at: float) -> None:
        await c.queue.send("cron-tick", {"scheduled_at": scheduled_at})
        nxt = next_tick(scheduled_at + interval / 1000)
        await c.schedule.at(nxt, "enqueue_cron_tick", nxt)

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-cron-tick", names=["cron-tick"])
        if msg is None:
            return Loop.continue_()

        def run_job() -> None:
            lctx.state["runs"] += 1
            lctx.state["last_run_at"] = msg.body["scheduled_at"]
            lctx.state["run_times"].append(msg.body["scheduled_at"])

        await lctx.step("run-cron-job", run_job)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("cron-loop", body)

    cron_actor = actor(
        state={"runs": 0, "last_run_at": None, "run_times": []},
        queues={"cron-tick": queue()},
        on_create=on_create,
        run=run,
        actions={"enqueue_cron_tick": enqueue_cron_tick, "get_state": _get_state},
    )
    return setup(use={"cron": cron_actor})


def queue_worker() -> Registry:
    """``queue_worker``: external systems enqueue jobs; each is processed in one step."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-job", timeout=30)
        if msg is None:
            return Loop.continue_()

        def process() -> None:
            lctx.state["processed"] += 1
            lctx.state["total_amount"] += msg.body["amount"]

        await lctx.step("process-job", process)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("worker-loop", body)

    worker = actor(
        state={"processed": 0, "total_amount": 0},
        queues={"jobs": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"queue_worker": worker})


def resource_lifecycle(tick: float = 1.0, log: list[str] | None = None) -> Registry:
    """``ticker``: a resource opened on wake and closed on sleep (in ``vars``), one-time
    setup, then a durable tick every ``tick`` seconds. ``log`` records open/close."""
    events = log if log is not None else []

    def open_resource() -> str:
        events.append("open")
        return "connected"

    def close_resource(_resource: str) -> None:
        events.append("close")

    def on_wake(c: ActorContext) -> None:
        c.vars["resource"] = open_resource()

    def on_sleep(c: ActorContext) -> None:
        if c.vars["resource"]:
            close_resource(c.vars["resource"])
            c.vars["resource"] = None

    async def body(lctx: WorkflowContext) -> Any:
        await lctx.sleep("tick", tick)

        def tick_step() -> None:
            lctx.state["ticks"] += 1

        await lctx.step("tick-step", tick_step)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        def init() -> None:
            if not ctx.vars["resource"]:
                ctx.vars["resource"] = open_resource()
            ctx.state["initialized"] = True

        await ctx.step("setup", init)
        await ctx.loop("main-loop", body)

    ticker = actor(
        vars={"resource": None},
        state={"initialized": False, "ticks": 0},
        on_wake=on_wake,
        on_sleep=on_sleep,
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"ticker": ticker})


def approval_gate() -> Registry:
    """``approval``: request approval once, then apply each decision that arrives."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-approval", timeout=30)
        if msg is None:
            return Loop.continue_()

        def decide() -> None:
            lctx.state["pending_request_id"] = msg.body["request_id"]
            lctx.state["last_decision"] = "approved" if msg.body["approved"] else "rejected"

        await lctx.step("apply-decision", decide)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        def request() -> None:
            ctx.state["pending_request_id"] = "req-1"
            ctx.state["last_decision"] = None

        await ctx.step("request-approval", request)
        await ctx.loop("approval-loop", body)

    gate = actor(
        state={"pending_request_id": None, "last_decision": None},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"approval": gate})


def fan_out_fan_in() -> Registry:
    """``fan_in``: three independent loads run as join branches; their sum is saved."""

    async def load_users() -> int:
        return 12

    async def load_orders() -> int:
        return 34

    async def load_invoices() -> int:
        return 56

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-refresh", timeout=30)
        if msg is None:
            return Loop.continue_()
        joined = await lctx.join(
            "parallel-work",
            {
                "users": lambda _b: load_users(),
                "orders": lambda _b: load_orders(),
                "invoices": lambda _b: load_invoices(),
            },
        )

        def merge() -> None:
            lctx.state["total"] = joined["users"] + joined["orders"] + joined["invoices"]

        await lctx.step("merge-results", merge)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("join-loop", body)

    fan_in = actor(state={"total": 0}, run=run, actions={"get_state": _get_state})
    return setup(use={"fan_in": fan_in})


def batch_drainer(batch_size: int = 5) -> Registry:
    """``drainer``: buffer metrics in state and flush every ``batch_size`` of them."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-metric", timeout=5)
        if msg is not None:
            await lctx.step(
                "buffer-message", lambda: lctx.state["pending"].append(msg.body["value"])
            )
        if len(lctx.state["pending"]) < batch_size:
            return Loop.continue_()

        def flush() -> None:
            lctx.state["last_batch_total"] = sum(lctx.state["pending"])
            lctx.state["flushed_batches"] += 1
            lctx.state["pending"] = []

        await lctx.step("flush-batch", flush)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("drain-loop", body)

    drainer = actor(
        state={"pending": [], "flushed_batches": 0, "last_batch_total": 0},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"drainer": drainer})


def coordinator_worker_rpc() -> Registry:
    """``coordinator`` dispatches each task to a ``task_worker`` actor by calling its action."""

    def run_task(c: ActorContext, value: int) -> int:
        c.state["tasks"] += 1
        return value * 2

    task_worker = actor(state={"tasks": 0}, actions={"run_task": run_task, "get_state": _get_state})

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-task", timeout=30)
        if msg is None:
            return Loop.continue_()
        task = msg.body

        async def dispatch() -> int:
            worker = lctx.client().task_worker.get_or_create(task["worker_id"])
            return await worker.run_task(task["value"])

        result = await lctx.step("dispatch-rpc", dispatch)

        def record() -> None:
            lctx.state["last_task_id"] = task["task_id"]
            lctx.state["last_result"] = result

        await lctx.step("record-result", record)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("orchestrator-loop", body)

    coordinator = actor(
        state={"last_task_id": None, "last_result": 0},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"coordinator": coordinator, "task_worker": task_worker})


def queue_rpc() -> Registry:
    """Async RPC over a queue: ``caller`` sends to ``responder`` with ``wait=True`` from a
    step; the responder's workflow completes the message with its answer."""
    responder = request_response().actors["doubler"]

    async def ask(c: ActorContext, value: int) -> int:
        # A plain action: hand the request to the workflow, which does the round trip.
        await c.queue.send("asks", {"value": value})
        return value

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-ask", names=["asks"])
        if msg is None:
            return Loop.continue_()

        async def call() -> Any:
            h = lctx.client().responder.get_or_create("main")
            result = await h.send("requests", {"value": msg.body["value"]}, wait=True, timeout=10)
            if result.status != "completed":
                raise TimeoutError("the responder did not answer in time")
            return result.response

        response = await lctx.step("call-responder", call)

        def record() -> None:
            lctx.state["answers"].append(response["doubled"])

        await lctx.step("record-answer", record)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("ask-loop", body)

    caller = actor(
        state={"answers": []},
        queues={"asks": queue()},
        run=run,
        actions={"ask": ask, "get_state": _get_state},
    )
    return setup(use={"caller": caller, "responder": responder})


def scatter_gather() -> Registry:
    """``scatter`` asks three ``shard`` actors in parallel (join) and sums their answers."""
    shard = actor(actions={"compute": lambda _c, value: value * 10})

    def call_shard(b: WorkflowContext, key: str, value: int) -> Any:
        async def call() -> int:
            return await b.client().shard.get_or_create(key).compute(value)

        return b.step(f"call-shard-{key}", call)

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-scatter", timeout=30)
        if msg is None:
            return Loop.continue_()
        value = msg.body["input"]
        gathered = await lctx.join(
            "gather",
            {f"shard_{k}": (lambda b, k=k: call_shard(b, k, value)) for k in ("a", "b", "c")},
        )

        def aggregate() -> None:
            lctx.state["last_sum"] = sum(gathered.values())

        await lctx.step("aggregate", aggregate)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("scatter-gather-loop", body)

    scatter = actor(state={"last_sum": 0}, run=run, actions={"get_state": _get_state})
    return setup(use={"scatter": scatter, "shard": shard})


def timeout_fallback(primary_delay: float = 30.0, budget: float = 0.05) -> Registry:
    """``frontend`` races a slow ``primary`` service against a ``budget``-second timer
    and falls back to the ``fallback`` service when the timer wins."""

    async def slow_fetch(_c: ActorContext) -> str:
        await asyncio.sleep(primary_delay)
        return "primary"

    primary = actor(actions={"fetch_value": slow_fetch})
    fallback = actor(actions={"fetch_value": lambda _c: "fallback"})

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-request", timeout=30)
        if msg is None:
            return Loop.continue_()

        async def call_primary(b: WorkflowContext) -> str:
            async def call() -> str:
                return await b.client().primary.get_or_create("main").fetch_value()

            return await b.step("call-primary", call)

        async def timer(b: WorkflowContext) -> str:
            await b.sleep("primary-timeout", budget)
            return "timeout"

        won = await lctx.race("primary-vs-timeout", [("primary", call_primary), ("timeout", timer)])
        value, source = won.value, "primary"
        if won.winner == "timeout":

            async def call_fallback() -> str:
                return await lctx.client().fallback.get_or_create("main").fetch_value()

            value = await lctx.step("fallback-call", call_fallback)
            source = "fallback"

        def record() -> None:
            lctx.state["last_source"] = source
            lctx.state["last_value"] = value

        await lctx.step("record-choice", record)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("timeout-loop", body)

    frontend = actor(
        state={"last_source": "none", "last_value": ""},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"frontend": frontend, "primary": primary, "fallback": fallback})


def checkout_saga() -> Registry:
    """Cross-actor saga: ``saga`` reserves stock at ``inventory`` and charges at ``billing``;
    if shipping fails, the compensations (refund, then release) run newest first.

    An order with ``"ship_fails": true`` makes the ``ship-order`` step fail with a
    :class:`CriticalError`. Each compensation is logged in the saga's
    ``compensations`` state so callers can see the order they ran in.
    """

    def reserve(c: ActorContext, order_id: str) -> str:
        c.state["reserved"].append(order_id)
        return f"reserve-{order_id}"

    def release(c: ActorContext, reservation_id: str) -> str:
        c.state["reserved"].remove(reservation_id.removeprefix("reserve-"))
        return reservation_id

    def charge(c: ActorContext, amount: int) -> str:
        c.state["balance"] += amount
        return f"charge-{amount}"

    def refund(c: ActorContext, charge_id: str) -> str:
        c.state["balance"] -= int(charge_id.removeprefix("charge-"))
        return charge_id

    inventory = actor(
        state={"reserved": []},
        actions={"reserve": reserve, "release": release, "get_state": _get_state},
    )
    billing = actor(
        state={"balance": 0},
        actions={"charge": charge, "refund": refund, "get_state": _get_state},
    )

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-order", timeout=30)
        if msg is None:
            return Loop.continue_()
        order = msg.body
        await lctx.rollback_checkpoint("checkout-saga")
        inv = lctx.client().inventory.get_or_create("main")
        bill = lctx.client().billing.get_or_create("main")

        async def undo_reserve(rctx: WorkflowContext, reservation_id: str) -> None:
            await inv.release(reservation_id)
            rctx.state["compensations"].append(f"release:{reservation_id}")

        async def undo_charge(rctx: WorkflowContext, charge_id: str) -> None:
            await bill.refund(charge_id)
            rctx.state["compensations"].append(f"refund:{charge_id}")

        await lctx.step(
            "reserve-inventory", lambda: inv.reserve(order["order_id"]), rollback=undo_reserve
        )
        await lctx.step("charge-card", lambda: bill.charge(order["amount"]), rollback=undo_charge)

        def ship() -> None:
            if order.get("ship_fails"):
                raise CriticalError(f"carrier rejected order {order['order_id']}")

        await lctx.step("ship-order", ship)

        def complete() -> None:
            lctx.state["completed_orders"] += 1

        await lctx.step("mark-complete", complete)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("checkout-loop", body)

    saga = actor(
        state={"completed_orders": 0, "compensations": []},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"saga": saga, "inventory": inventory, "billing": billing})


def control_loop() -> Registry:
    """``controller``: pause / resume / stop signals drive the mode; nothing polls."""

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-signal", timeout=30)
        if msg is None:
            return Loop.continue_()
        kind = msg.body["kind"]

        def apply() -> None:
            lctx.state["handled_signals"] += 1
            lctx.state["mode"] = {"pause": "paused", "resume": "running", "stop": "stopped"}.get(
                kind, lctx.state["mode"]
            )

        await lctx.step("apply-signal", apply)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("control-loop", body)

    controller = actor(
        state={"mode": "running", "handled_signals": 0},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"controller": controller})


def poll_with_backoff(
    base: float = 0.01, cap: float = 5.0, healthy_interval: float = 1.0
) -> Registry:
    """``poller``: poll a dependency that answers every third try; double the delay after
    each failure (up to ``cap``), reset it after a success. ``delays`` logs each wait."""

    def poll_external(attempt: int) -> bool:
        return attempt % 3 == 0

    async def body(lctx: WorkflowContext) -> Any:
        def poll() -> bool:
            lctx.state["attempts"] += 1
            return poll_external(lctx.state["attempts"])

        if await lctx.step("poll-target", poll):

            def healthy() -> None:
                lctx.state["status"] = "healthy"
                lctx.state["backoff"] = base

            await lctx.step("reset-backoff", healthy)
            await lctx.sleep("healthy-interval", healthy_interval)
            return Loop.continue_()

        def grow() -> None:
            lctx.state["status"] = "retrying"
            lctx.state["backoff"] = min(lctx.state["backoff"] * 2, cap)
            lctx.state["delays"].append(lctx.state["backoff"])

        await lctx.step("grow-backoff", grow)
        await lctx.sleep("retry-delay", lctx.state["backoff"])
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("poll-loop", body)

    poller = actor(
        state={"attempts": 0, "backoff": base, "status": "unknown", "delays": []},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"poller": poller})


def child_workers() -> Registry:
    """``parent`` starts three ``child`` actors once, then fans each batch out to them."""

    def process(c: ActorContext, payload: int) -> int:
        c.state["calls"] += 1
        return payload * 3

    child = actor(state={"calls": 0}, actions={"process": process, "get_state": _get_state})
    keys = ("child-a", "child-b", "child-c")

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-batch", timeout=30)
        if msg is None:
            return Loop.continue_()
        payload = msg.body["payload"]

        def branch(key: str) -> Callable[[WorkflowContext], Any]:
            async def run_child(b: WorkflowContext) -> int:
                async def call() -> int:
                    return await b.client().child.get_or_create(key).process(payload)

                return await b.step(f"run-{key}", call)

            return run_child

        results = await lctx.join("collect-updates", {k: branch(k) for k in keys})

        def reconcile() -> None:
            lctx.state["last_total"] = sum(results.values())

        await lctx.step("reconcile", reconcile)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        async def start_children() -> None:
            for key in keys:
                await ctx.client().child.get_or_create(key).process(0)

        await ctx.step("start-children", start_children)
        await ctx.loop("orchestrate-loop", body)

    parent = actor(state={"last_total": 0}, run=run, actions={"get_state": _get_state})
    return setup(use={"parent": parent, "child": child})


def bounded_drain(max_per_iteration: int = 10, concurrency: int = 3) -> Registry:
    """``bounded``: take at most ``max_per_iteration`` messages per iteration and process
    the window with at most ``concurrency`` jobs at once (``peak`` records the most seen)."""

    async def body(lctx: WorkflowContext) -> Any:
        window: list[dict[str, Any]] = []
        for i in range(max_per_iteration):
            msg = await lctx.queue.next(f"wait-work-{i}", timeout=30 if i == 0 else 0.01)
            if msg is None:
                break
            window.append(msg.body)
        if not window:
            return Loop.continue_()

        async def process_window() -> None:
            limit = asyncio.Semaphore(concurrency)
            running = {"now": 0, "peak": 0}

            async def process(work: dict[str, Any]) -> int:
                async with limit:
                    running["now"] += 1
                    running["peak"] = max(running["peak"], running["now"])
                    await asyncio.sleep(0.001)  # the "work"; lets other jobs overlap
                    running["now"] -= 1
                    return work["value"] * 2

            results = await asyncio.gather(*(process(w) for w in window))
            lctx.state["processed"] += len(window)
            lctx.state["last_window_size"] = len(window)
            lctx.state["last_window_total"] = sum(results)
            lctx.state["windows"].append(len(window))
            lctx.state["peak"] = max(lctx.state["peak"], running["peak"])

        await lctx.step("process-window", process_window)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("bounded-drain-loop", body)

    bounded = actor(
        state={
            "processed": 0,
            "last_window_size": 0,
            "last_window_total": 0,
            "windows": [],
            "peak": 0,
        },
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"bounded": bounded})


def versioned(version: int, declare_removed: bool = True) -> Registry:
    """``versioned``: the same actor across two deployments.

    v1 validates with ``validate-v1``. v2 validates with ``validate-v2`` instead and
    declares ``ctx.removed("validate-v1", "step")`` so histories recorded by v1
    still replay (``declare_removed=False`` shows what happens without it). Both
    run the same ``main-loop``: wait for a ``tick`` and count it, until ``stop``.
    """

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-tick", names=["tick", "stop"])
        if msg is None or msg.name == "stop":
            return Loop.break_(lctx.state["runs"])

        def heartbeat() -> None:
            lctx.state["runs"] += 1
            lctx.state["heartbeats"].append(f"v{version}")

        await lctx.step("heartbeat", heartbeat)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> Any:
        def validate() -> None:
            ctx.state["runs"] += 1
            ctx.state["validated_by"].append(f"v{version}")

        if version == 1:
            await ctx.step("validate-v1", validate)
        else:
            await ctx.step("validate-v2", validate)
            if declare_removed:
                await ctx.removed("validate-v1", "step")
        return await ctx.loop("main-loop", body)

    versioned_actor = actor(
        state={"runs": 0, "validated_by": [], "heartbeats": []},
        queues={"tick": queue(), "stop": queue()},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"versioned": versioned_actor})


def checkpoint_friendly(log: list[str] | None = None) -> Registry:
    """``payments``: per payment, a rollback checkpoint, a pure ``build-plan`` step, then
    one step that applies every side effect. ``log`` records each side effect."""
    effects = log if log is not None else []

    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait-payment", timeout=30)
        if msg is None:
            return Loop.continue_()
        payment = msg.body
        await lctx.rollback_checkpoint("apply-payment-checkpoint")
        plan = await lctx.step(
            "build-plan", lambda: {"payment_id": payment["id"], "amount": payment["amount"]}
        )

        def apply() -> None:
            effects.append(plan["payment_id"])
            lctx.state["applied_count"] += 1
            lctx.state["total_amount"] += plan["amount"]
            lctx.state["last_payment_id"] = plan["payment_id"]

        await lctx.step("apply-side-effects", apply)
        return Loop.continue_()

    @workflow
    async def run(ctx: WorkflowContext) -> None:
        await ctx.loop("payment-loop", body)

    payments = actor(
        state={"applied_count": 0, "total_amount": 0, "last_payment_id": None},
        run=run,
        actions={"get_state": _get_state},
    )
    return setup(use={"payments": payments})
