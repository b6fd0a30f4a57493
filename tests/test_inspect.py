"""The read-only inspection API (orchestrator/inspect.py): on a live engine and on a
database opened without one."""

from __future__ import annotations

from typing import Any

import pytest
from support import eventually

from orchestrator import Inspector, WorkflowContext, actor, queue, setup, workflow
from orchestrator.errors import ActorNotFound, InvalidRequest, RunNotFound


def _registry() -> Any:
    @workflow
    async def broken(ctx: WorkflowContext) -> None:
        def fail() -> None:
            raise RuntimeError("the review file is missing")

        await ctx.step("read-review", fail, max_retries=0)

    @workflow
    async def worker(ctx: WorkflowContext) -> None:
        await ctx.step("ready", lambda: "ok")
        # Receives one message, then waits for another that never comes.
        await ctx.queue.next("first", names=["jobs"], completable=True)
        await ctx.queue.next("second", names=["jobs"], completable=True)

    def get(c: Any) -> Any:
        return c.state

    return setup(
        use={
            "broken": actor(run=broken),
            "worker": actor(run=worker, queues={"jobs": queue()}),
            "plain": actor(state={"n": 1}, actions={"get": get}, options={"sleep_timeout": None}),
        }
    )


async def _populate(engine: Any) -> None:
    client = engine.client()
    await client.broken.create("b1")
    await client.plain.create("p1")
    w = await client.worker.create("w1")
    await eventually(w.history, lambda h: any(e.path == "ready" for e in h.entries))
    for n in range(3):
        await w.send("jobs", {"n": n})
    b = client.broken.get("b1")
    await eventually(b.history, lambda h: h.workflow_status == "failed")
    # Two jobs received (in flight, never completed) by the workflow, one waiting.
    await eventually(
        w.queue_contents,
        lambda ms: [m.in_flight for m in ms] == [True, True, False],
        what="two jobs received",
    )


async def test_live_engine_inspector(make_engine: Any) -> None:
    async with make_engine(_registry()) as engine:
        await _populate(engine)
        inspector = engine.inspector
        assert inspector.is_live
        plain = await inspector.find_actor("plain", "p1")
        assert plain is not None and plain.awake

        described = await inspector.describe_actor(plain.actor_id)
        assert described.awake is True and described.subscribers == 0
        sub = await engine.client().plain.get("p1").connect()
        try:
            assert (await inspector.describe_actor(plain.actor_id)).subscribers == 1
            assert inspector.live_stats().subscribers == 1
        finally:
            await sub.close()

        failed = await inspector.list_actors(workflow_status="failed")
        assert [(a.name, a.key) for a in failed] == [("broken", ["b1"])]
        history = await inspector.history(failed[0].actor_id)
        assert history.is_workflow and history.workflow_status == "failed"
        assert history.entries[0].path == "read-review"
        assert "the review file is missing" in str(history.error)

        worker = await inspector.find_actor("worker", ["w1"])
        assert worker is not None
        messages = await inspector.queue_contents(worker.actor_id)
        assert [m.body["n"] for m in messages] == [0, 1, 2]
        desc = await inspector.describe_actor(worker.actor_id)
        assert [m.in_flight for m in messages] == [True, True, False]
        assert (desc.queue_pending, desc.queue_in_flight) == (1, 2)

        stats = await inspector.stats()
        assert stats.actors_by_name == {"broken": 1, "worker": 1, "plain": 1}
        assert stats.workflows_by_status.get("failed") == 1
        assert stats.awake is not None and stats.awake >= 1
        live = inspector.live_stats()
        assert live.awake_by_name.get("plain") == 1
        assert live.awake == sum(live.awake_by_name.values())


async def test_inspector_on_a_store_without_an_engine(make_engine: Any, db_path: str) -> None:
    async with make_engine(_registry()) as engine:
        await _populate(engine)
        live_history = await engine.client().broken.get("b1").history()
        worker_id = (await engine.inspector.find_actor("worker", "w1")).actor_id  # type: ignore[union-attr]
        live_queue = await engine.inspector.queue_contents(worker_id)
    async with await Inspector.open(db_path) as inspector:
        assert not inspector.is_live
        names = sorted((a.name, a.key[0]) for a in await inspector.list_actors())
        assert names == [("broken", "b1"), ("plain", "p1"), ("worker", "w1")]
        assert all(not a.awake for a in await inspector.list_actors())
        assert [a.name for a in await inspector.list_actors("plain")] == ["plain"]

        broken = await inspector.find_actor("broken", ["b1"])
        assert broken is not None
        history = await inspector.history(broken.actor_id)
        assert history.model_dump() == live_history.model_dump()

        # Without an engine, liveness is unknown rather than "asleep".
        desc = await inspector.describe_actor(broken.actor_id)
        assert desc.awake is None and desc.subscribers is None
        assert desc.workflow_status == "failed" and desc.entries_by_status == {"failed": 1}

        # The received job is still in flight: the next start delivers it again only
        # to the workflow that recorded it.
        queue = await inspector.queue_contents(worker_id)
        assert [(m.message_id, m.in_flight) for m in queue] == [
            (m.message_id, m.in_flight) for m in live_queue
        ]
        assert await inspector.get_state((await inspector.find_actor("plain", "p1")).actor_id) == {  # type: ignore[union-attr]
            "n": 1
        }
        stats = await inspector.stats()
        assert stats.awake is None and stats.subscribers is None
        assert inspector.live_stats().awake == 0

        assert await inspector.find_actor("plain", "nobody") is None
        with pytest.raises(ActorNotFound):
            await inspector.history("no-such-id")


async def test_runs_on_a_store_without_an_engine(make_engine: Any, db_path: str) -> None:
    async def handle(ctx: WorkflowContext, message: Any) -> Any:
        value = await ctx.step("double", lambda: message.body["n"] * 2)
        if message.body["n"] < 0:
            raise ValueError("negative")
        return value

    registry = setup(use={"jobs": actor(queues={"in": queue(run=handle, concurrency=2)})})
    async with make_engine(registry) as engine:
        h = await engine.client().jobs.create("j")
        ok = await h.send("in", {"n": 2}, wait=True, timeout=10)
        bad = await h.send("in", {"n": -1}, wait=True, timeout=10)
        assert (ok.status, bad.status) == ("completed", "failed")
        info = await engine.inspector.find_actor("jobs", "j")
        assert info is not None
        live = await engine.get_run(info.actor_id, ok.message_id)
    async with await Inspector.open(db_path) as inspector:
        runs = await inspector.list_runs()
        assert {r.run_id: r.status for r in runs} == {
            ok.message_id: "completed",
            bad.message_id: "failed",
        }
        assert [r.run_id for r in await inspector.list_runs(status="failed")] == [bad.message_id]
        detail = await inspector.get_run(live.actor_id, ok.message_id)
        assert detail.result == 4 and detail.model_dump() == live.model_dump()
        failed = await inspector.get_run(live.actor_id, bad.message_id)
        assert failed.error is not None and "negative" in failed.error["message"]
        with pytest.raises(InvalidRequest):
            await inspector.list_runs(status="stuck")
        with pytest.raises(RunNotFound):
            await inspector.get_run(live.actor_id, 10**9)
