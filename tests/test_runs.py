"""Runs: a queue whose handler is a per-message durable workflow (real SQLite)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator import CriticalError, Loop, actor, queue, setup, workflow
from orchestrator.errors import (
    InvalidRequest,
    RunCancelled,
    RunFailed,
    RunNotCancellable,
    RunNotFound,
    RunNotRetryable,
    WorkflowNotRecoverable,
)
from tests.support import eventually


class Probe:
    """What the handlers did, observed by the test (in-process, no timing)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.running = 0
        self.max_running = 0
        self.gates: dict[Any, asyncio.Event] = {}
        self.fail: set[Any] = set()
        self.cancelled: list[Any] = []

    def count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def gate(self, key: Any) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())


def registry(probe: Probe, *, concurrency: int | None = None) -> Any:
    async def handle(ctx: Any, message: Any) -> Any:
        body = message.body
        tag = body["tag"]
        await ctx.run_meta(tag=tag)

        def prepare() -> str:
            probe.count(f"prepare:{tag}")
            return f"prepared {tag}"

        prepared = await ctx.step("prepare", prepare)

        async def work() -> int:
            probe.count(f"work:{tag}")
            probe.running += 1
            probe.max_running = max(probe.max_running, probe.running)
            try:
                if body.get("block"):
                    await probe.gate(tag).wait()
                if tag in probe.fail:
                    raise RuntimeError(f"work {tag} broke")
                return len(prepared)
            except asyncio.CancelledError:
                probe.cancelled.append(tag)
                raise
            finally:
                probe.running -= 1

        n = await ctx.step("work", work, max_retries=body.get("retries", 0))
        if body.get("critical"):
            raise CriticalError("bad input found late")
        if body.get("invalid"):
            raise InvalidRequest("repo does not exist", field="body.repo")
        return {"tag": tag, "n": n, "run_id": ctx.run_id}

    return setup(
        use={
            "worker": actor(
                state={},
                queues={
                    "jobs": queue(run=handle, concurrency=concurrency),
                    "plain": queue(),
                },
            )
        }
    )


async def test_completed_run_answers_the_waiting_sender(make_engine):
    probe = Probe()
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        res = await h.send("jobs", {"tag": "x"}, wait=True, timeout=10)
        assert res.status == "completed"
        assert res.response == {"tag": "x", "n": 10, "run_id": res.message_id}
        run = await h.run(res.message_id)
        assert run.status == "completed" and run.result == res.response
        assert run.input == {"tag": "x"} and run.meta == {"tag": "x"}
        assert [(e.path, e.status) for e in run.history] == [
            ("prepare", "completed"),
            ("work", "completed"),
        ]
        assert run.started_at and run.finished_at and run.error is None
        assert [r.run_id for r in await h.runs()] == [res.message_id]
        assert await h.runs("failed") == []
        # the message is gone; the actor's own history holds no run entries
        assert await h.queue_contents() == []
        assert (await h.history()).entries == []


async def test_a_failed_run_fails_alone_and_the_next_is_served(make_engine):
    probe = Probe()
    probe.fail.add("bad")
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        res = await h.send("jobs", {"tag": "bad", "retries": 1}, wait=True, timeout=10)
        assert res.status == "failed"
        assert res.error["group"] == "workflow" and res.error["code"] == "step_exhausted"
        assert "work bad broke" in res.error["message"]
        assert probe.calls["work:bad"] == 2  # one retry
        ok = await h.send("jobs", {"tag": "good"}, wait=True, timeout=10)
        assert ok.status == "completed"
        run = await h.run(res.message_id)
        assert run.status == "failed" and run.error["code"] == "step_exhausted"
        assert {r.run_id: r.status for r in await h.runs()} == {
            res.message_id: "failed",
            ok.message_id: "completed",
        }
        # a non-engine exception: group "run", code = its class name
        crit = await h.send("jobs", {"tag": "c", "critical": True}, wait=True, timeout=10)
        assert crit.status == "failed"
        assert (crit.error["group"], crit.error["code"]) == ("run", "CriticalError")
        assert crit.error["message"] == "bad input found late"
        inv = await h.send("jobs", {"tag": "i", "invalid": True}, wait=True, timeout=10)
        assert (inv.error["group"], inv.error["code"]) == ("request", "invalid")
        assert inv.error["metadata"]["field"] == "body.repo"
        with pytest.raises(RunFailed) as info:
            await h.send("jobs", {"tag": "bad"}, wait=True, timeout=10, raise_on_failure=True)
        assert info.value.metadata["error"]["code"] == "step_exhausted"
        assert len(await h.runs("failed")) == 4


async def test_concurrency_bounds_runs_and_the_rest_wait_in_order(make_engine):
    probe = Probe()
    async with make_engine(registry(probe, concurrency=2)) as engine:
        h = engine.client().worker.get_or_create("a")
        ids = [(await h.send("jobs", {"tag": i, "block": True})).message_id for i in range(5)]
        await eventually(lambda: _async(probe.running), lambda n: n == 2, what="two running")
        statuses = {r.run_id: r.status for r in await h.runs()}
        assert [statuses[i] for i in ids] == ["running", "running", "queued", "queued", "queued"]
        for i in range(5):
            probe.gate(i).set()
        for i in ids:
            await eventually(lambda i=i: h.run(i), lambda r: r.status == "completed")
        assert probe.max_running == 2
        # started in send order
        runs = sorted(await h.runs(), key=lambda r: r.run_id)
        starts = [r.started_at for r in runs]
        assert starts == sorted(starts)


async def test_concurrency_default_comes_from_the_engine_and_1_is_serial(make_engine, tmp_path):
    probe = Probe()
    async with make_engine(registry(probe), run_concurrency=3) as engine:
        h = engine.client().worker.get_or_create("a")
        for i in range(4):
            await h.send("jobs", {"tag": i, "block": True})
        await eventually(lambda: _async(probe.running), lambda n: n == 3)
        for i in range(4):
            probe.gate(i).set()
        await eventually(lambda: h.runs("completed"), lambda r: len(r) == 4)
        assert probe.max_running == 3
    probe = Probe()
    async with make_engine(
        registry(probe, concurrency=1), db=str(tmp_path / "serial.db")
    ) as engine:
        h = engine.client().worker.get_or_create("a")
        for i in range(3):
            probe.gate(i).set()
            await h.send("jobs", {"tag": i, "block": True})
        await eventually(lambda: h.runs("completed"), lambda r: len(r) == 3)
        assert probe.max_running == 1


async def test_cancel_a_running_run_interrupts_its_step_and_is_durable(make_engine):
    probe = Probe()
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        waiting = asyncio.ensure_future(
            h.send("jobs", {"tag": "slow", "block": True}, wait=True, timeout=30)
        )
        runs = await eventually(h.runs, lambda r: r and r[0].status == "running")
        await eventually(lambda: _async(probe.running), lambda n: n == 1)
        info = await h.cancel_run(runs[0].run_id)
        assert info.status == "cancelled"
        res = await waiting
        assert res.status == "cancelled" and res.message_id == runs[0].run_id
        assert probe.cancelled == ["slow"]
        with pytest.raises(RunNotCancellable):
            await h.cancel_run(runs[0].run_id)
        with pytest.raises(RunNotFound):
            await h.cancel_run(999_999)
        # the next one is served
        probe.gate("next").set()
        nxt = await h.send("jobs", {"tag": "next", "block": True}, wait=True, timeout=10)
        assert nxt.status == "completed"
    # a restart does not resume the cancelled run
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        await h.resolve()
        assert (await h.run(runs[0].run_id)).status == "cancelled"
        assert probe.calls["work:slow"] == 1


async def test_cancel_a_queued_run(make_engine):
    probe = Probe()
    async with make_engine(registry(probe, concurrency=1)) as engine:
        h = engine.client().worker.get_or_create("a")
        first = await h.send("jobs", {"tag": 1, "block": True})
        second = asyncio.ensure_future(h.send("jobs", {"tag": 2}, wait=True, timeout=30))
        runs = await eventually(h.runs, lambda r: len(r) == 2)
        queued = next(r for r in runs if r.status == "queued")
        await h.cancel_run(queued.run_id)
        assert (await second).status == "cancelled"
        probe.gate(1).set()
        await eventually(lambda: h.run(first.message_id), lambda r: r.status == "completed")
        assert "prepare:2" not in probe.calls
        # timed_out only means the wait ran out: it never raises
        late = await h.send(
            "jobs", {"tag": 3, "block": True}, wait=True, timeout=0, raise_on_failure=True
        )
        assert late.status == "timed_out"
        cancelling = asyncio.ensure_future(
            h.send("jobs", {"tag": 4, "block": True}, wait=True, raise_on_failure=True)
        )
        await eventually(h.runs, lambda r: len(r) == 4)
        await h.cancel_run(late.message_id + 1)
        with pytest.raises(RunCancelled):
            await cancelling


async def test_retry_reruns_from_the_failed_step_only(make_engine):
    probe = Probe()
    probe.fail.add("r")
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        res = await h.send("jobs", {"tag": "r"}, wait=True, timeout=10)
        assert res.status == "failed"
        with pytest.raises(RunNotRetryable):
            await h.retry_run(
                (await h.send("jobs", {"tag": "ok"}, wait=True, timeout=10)).message_id
            )
        probe.fail.clear()
        info = await h.retry_run(res.message_id)
        assert info.status in ("queued", "running")
        run = await eventually(lambda: h.run(res.message_id), lambda r: r.status == "completed")
        assert run.result["tag"] == "r" and run.error is None
        assert probe.calls["prepare:r"] == 1  # replayed, not run again
        assert probe.calls["work:r"] == 2
        assert [(e.path, e.status, e.attempts) for e in run.history] == [
            ("prepare", "completed", 1),
            ("work", "completed", 1),
        ]


async def test_retry_a_cancelled_run(make_engine):
    probe = Probe()
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        rid = (await h.send("jobs", {"tag": "c", "block": True})).message_id
        await eventually(lambda: _async(probe.running), lambda n: n == 1)
        await h.cancel_run(rid)
        probe.gate("c").set()
        await h.retry_run(rid)
        await eventually(lambda: h.run(rid), lambda r: r.status == "completed")
        assert probe.calls["prepare:c"] == 1 and probe.calls["work:c"] == 2


async def test_running_runs_resume_after_a_restart(make_engine):
    probe = Probe()
    async with make_engine(registry(probe, concurrency=2)) as engine:
        h = engine.client().worker.get_or_create("a")
        ids = [(await h.send("jobs", {"tag": i, "block": True})).message_id for i in range(3)]
        await eventually(lambda: _async(probe.running), lambda n: n == 2)
    # stopped with two runs mid-step and one queued
    probe.running = 0
    for i in range(3):
        probe.gate(i).set()
    async with make_engine(registry(probe, concurrency=2)) as engine:
        h = engine.client().worker.get_or_create("a")
        await h.resolve()
        for i in ids:
            await eventually(lambda i=i: h.run(i), lambda r: r.status == "completed")
        assert all(probe.calls[f"prepare:{i}"] == 1 for i in range(3))
        assert probe.calls["work:0"] == 2 and probe.calls["work:2"] == 1


async def test_broadcasts(make_engine):
    probe = Probe()
    probe.fail.add("f")
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("a")
        sub = await h.connect()
        ok = await h.send("jobs", {"tag": "ok"}, wait=True, timeout=10)
        bad = await h.send("jobs", {"tag": "f", "retries": 1}, wait=True, timeout=10)
        seen: list[tuple[str, Any]] = []
        while not any(n == "run_failed" for n, _ in seen):
            ev = await sub.next(timeout=10)
            seen.append((ev.name, ev.payload))
        await sub.close()
        names = [n for n, p in seen if p["run_id"] == ok.message_id]
        assert names == [
            "run_started",
            "run_meta",
            "run_step",
            "run_step",
            "run_step",
            "run_step",
            "run_completed",
        ]
        steps = [
            (p["step"], p["status"], p["attempt"])
            for n, p in seen
            if n == "run_step" and p["run_id"] == bad.message_id
        ]
        assert steps == [
            ("prepare", "running", 1),
            ("prepare", "completed", 1),
            ("work", "running", 1),
            ("work", "retrying", 1),
            ("work", "running", 2),
            ("work", "failed", 2),
        ]
        failed = next(p for n, p in seen if n == "run_failed")
        assert failed["error"]["code"] == "step_exhausted"
        started = next(p for n, p in seen if n == "run_started")
        assert started == {"run_id": ok.message_id, "queue": "jobs"}


async def test_list_runs_across_actors_and_filters(make_engine):
    probe = Probe()
    probe.fail.add("bad")
    async with make_engine(registry(probe)) as engine:
        c = engine.client()
        a, b = c.worker.get_or_create("a"), c.worker.get_or_create("b")
        await a.send("jobs", {"tag": "ok"}, wait=True, timeout=10)
        await b.send("jobs", {"tag": "bad"}, wait=True, timeout=10)
        failed = await c.list_runs(status="failed")
        assert [(r.key, r.name) for r in failed] == [(["b"], "worker")]
        assert len(await engine.list_runs(name="worker")) == 2
        assert await engine.list_runs(name="nope") == []
        with pytest.raises(InvalidRequest):
            await engine.list_runs(status="stuck")


async def test_history_of_old_runs_is_pruned(make_engine):
    probe = Probe()
    async with make_engine(registry(probe), run_history_keep=2) as engine:
        h = engine.client().worker.get_or_create("a")
        ids = [
            (await h.send("jobs", {"tag": i}, wait=True, timeout=10)).message_id for i in range(4)
        ]
        kept = [len((await h.run(i)).history) for i in ids]
        assert kept == [0, 0, 2, 2]
        assert (await h.run(ids[0])).result["tag"] == 0  # the record stays


async def test_main_workflow_and_run_queue_on_one_actor(make_engine):
    async def main(ctx: Any) -> None:
        async def body(lctx: Any) -> Any:
            msg = await lctx.queue.next("wait", names=["plain"], completable=True)
            n = await lctx.step("double", lambda: msg.body * 2)
            await msg.complete(n)
            return Loop.continue_()

        await ctx.loop("loop", body)

    async def handle(ctx: Any, message: Any) -> Any:
        return await ctx.step("inc", lambda: message.body + 1)

    reg = setup(
        use={
            "both": actor(
                queues={"plain": queue(), "jobs": queue(run=handle)},
                run=workflow(main),
            )
        }
    )
    async with make_engine(reg) as engine:
        h = engine.client().both.get_or_create("a")
        assert (await h.send("plain", 4, wait=True, timeout=10)).response == 8
        assert (await h.send("jobs", 4, wait=True, timeout=10)).response == 5
        assert (await h.send("plain", 5, wait=True, timeout=10)).response == 10
        assert [e.path for e in (await h.history()).entries if e.kind == "loop"] == ["loop"]


async def test_recover_and_cancel_a_failed_main_workflow(make_engine):
    flaky = {"fail": True, "runs": 0}

    async def main(ctx: Any) -> Any:
        def once() -> int:
            flaky["runs"] += 1
            return flaky["runs"]

        await ctx.step("first", once)

        def second() -> str:
            if flaky["fail"]:
                raise RuntimeError("not yet")
            return "done"

        return await ctx.step("second", second, max_retries=0)

    reg = setup(use={"wf": actor(run=workflow(main))})
    async with make_engine(reg) as engine:
        h = engine.client().wf.get_or_create("a")
        await eventually(h.history, lambda hi: hi.workflow_status == "failed")
        assert [a.key for a in await engine.list_actors(workflow_status="failed")] == [["a"]]
        flaky["fail"] = False
        await h.recover_workflow()
        hist = await eventually(h.history, lambda hi: hi.workflow_status == "completed")
        assert hist.output == "done" and flaky["runs"] == 1
        with pytest.raises(WorkflowNotRecoverable):
            await h.recover_workflow()
        with pytest.raises(WorkflowNotRecoverable):
            await h.cancel_workflow()
        flaky["fail"] = True
        h2 = engine.client().wf.get_or_create("b")
        await eventually(h2.history, lambda hi: hi.workflow_status == "failed")
        assert (await h2.cancel_workflow()).workflow_status == "cancelled"
    async with make_engine(reg) as engine:
        h2 = engine.client().wf.get_or_create("b")
        assert (await h2.history()).workflow_status == "cancelled"


async def test_a_failed_main_workflow_answers_waiting_senders(make_engine):
    async def main(ctx: Any) -> None:
        msg = await ctx.queue.next("take", names=["in"], completable=True)
        await ctx.step("boom", lambda: 1 / 0, max_retries=0)
        await msg.complete("never")

    reg = setup(use={"m": actor(queues={"in": queue()}, run=workflow(main))})
    async with make_engine(reg) as engine:
        h = engine.client().m.get_or_create("a")
        res = await h.send("in", 1, wait=True, timeout=30)
        assert res.status == "failed" and res.error["code"] == "step_exhausted"


def test_queue_declaration_is_checked():
    async def h(ctx: Any, m: Any) -> None: ...

    with pytest.raises(ValueError):
        queue(run=h, concurrency=0)
    with pytest.raises(ValueError):
        queue(concurrency=2)
    with pytest.raises(TypeError):
        queue(run="nope")  # type: ignore[arg-type]


async def _async(value: Any) -> Any:
    return value


async def test_the_runs_example(make_engine):
    from examples import runs as ex

    async with make_engine(ex.registry) as engine:
        h = engine.client().translator.get_or_create("main")
        ok = await h.send("jobs", {"text": "hello world"}, wait=True, timeout=10)
        assert ok.response == {"text": "bonjour monde"}
        bad = await h.send("jobs", {"text": "hi", "lang": "xx"}, wait=True, timeout=10)
        assert bad.status == "failed" and bad.error["code"] == "step_exhausted"
        with pytest.raises(InvalidRequest):
            await h.send("jobs", {"lang": "fr"})  # body validated at send time
        assert [r.meta for r in await h.runs()] == [{"lang": "xx"}, {"lang": "fr"}]


async def test_run_metrics(make_engine):
    from orchestrator.metrics import REGISTRY

    probe = Probe()
    async with make_engine(registry(probe)) as engine:
        h = engine.client().worker.get_or_create("metrics")
        await h.send("jobs", {"tag": "m", "block": True})
        await eventually(lambda: _async(probe.running), lambda n: n == 1)
        assert 'agentvm_runs{actor="worker",status="running"} 1' in REGISTRY.render()
        probe.gate("m").set()
        await eventually(h.runs, lambda r: r[0].status == "completed")
        assert 'agentvm_runs_total{actor="worker",status="completed"}' in REGISTRY.render()
