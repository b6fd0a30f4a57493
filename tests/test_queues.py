"""Queue consumers outside workflows: next, next_batch, try_next, iter, acks."""

from __future__ import annotations

from orchestrator import Engine, actor, queue, setup
from tests.support import eventually


def _inbox():
    async def take_one(c):
        msg = c.queue.try_next(names=["jobs"])
        return None if msg is None else msg.body

    async def take_batch(c, count):
        msgs = await c.queue.next_batch(count=count, names=["jobs"], timeout=0.05)
        return [m.body for m in msgs]

    async def take_or_none(c):
        msg = await c.queue.next(names=["other"], timeout=0.01)
        return None if msg is None else msg.body

    async def push(c, body):
        return await c.queue.send("jobs", body)

    return actor(
        state={},
        queues={"jobs": queue(), "other": queue()},
        actions={
            "take_one": take_one,
            "take_batch": take_batch,
            "take_or_none": take_or_none,
            "push": push,
        },
    )


async def test_try_next_next_batch_and_timeout(make_engine):
    async with make_engine(setup(use={"inbox": _inbox()})) as engine:
        h = engine.client().inbox.get_or_create("a")
        assert await h.take_one() is None
        for i in range(5):
            await h.send("jobs", i)
        assert await h.take_one() == 0
        assert await h.take_batch(3) == [1, 2, 3]
        assert await h.take_or_none() is None
        # Messages taken by an action are acknowledged when it returns.
        remaining = await h.queue_contents()
        assert [m.body for m in remaining] == [4]


async def test_self_send_from_an_action_commits_with_it(make_engine, db_path):
    reg = setup(use={"inbox": _inbox()})
    async with make_engine(reg) as engine:
        h = engine.client().inbox.get_or_create("b")
        mid = await h.push({"task": 1})
        assert [m.message_id for m in await h.queue_contents()] == [mid]
    async with make_engine(reg) as engine:
        assert await engine.client().inbox.get("b").take_one() == {"task": 1}


async def test_plain_run_handler_answers_waiting_senders(make_engine):
    async def run(c):
        async for msg in c.queue.iter(names=["ask"], completable=True):
            c.state["seen"] += 1
            await msg.complete({"echo": msg.body, "n": c.state["seen"]})

    reg = setup(use={"echo": actor(state={"seen": 0}, queues={"ask": queue()}, run=run)})
    async with make_engine(reg) as engine:
        h = engine.client().echo.get_or_create("main")
        first = await h.send("ask", "hi", wait=True, timeout=5)
        second = await h.send("ask", "again", wait=True, timeout=5)
        assert first.status == "completed" and first.response == {"echo": "hi", "n": 1}
        assert second.response == {"echo": "again", "n": 2}
        assert await h.queue_contents() == []


async def test_wait_times_out_and_the_message_stays(make_engine):
    reg = setup(use={"inbox": _inbox()})
    async with make_engine(reg) as engine:
        h = engine.client().inbox.get_or_create("c")
        result = await h.send("jobs", {"x": 1}, wait=True, timeout=0.01)
        assert result.status == "timed_out"
        assert [m.message_id for m in await h.queue_contents()] == [result.message_id]


async def test_failed_plain_consumer_returns_its_leased_message(make_engine):
    calls: list[int] = []

    async def run(c):
        msg = await c.queue.next(names=["jobs"], completable=True)
        calls.append(msg.id)
        raise RuntimeError("consumer crashed before completing")

    async def peek(c):
        msg = c.queue.try_next(names=["jobs"], completable=True)
        return None if msg is None else msg.body

    reg = setup(use={"fragile": actor(queues={"jobs": queue()}, run=run, actions={"peek": peek})})
    async with make_engine(reg) as engine:
        h = engine.client().fragile.get_or_create("x")
        await h.send("jobs", {"job": 1})
        await eventually(lambda: _value(calls), lambda c: len(c) == 1, what="consumer ran")
        # The failed consumer never completed it: it is back in the queue for others.
        assert await h.peek() == {"job": 1}


async def _value(v):
    return v


async def test_subscribers_receive_broadcasts_and_filters_apply(make_engine):
    async def bump(c):
        c.state["n"] += 1
        c.broadcast("bumped", c.state["n"])
        c.broadcast("noise", None)

    reg = setup(use={"b": actor(state={"n": 0}, actions={"bump": bump})})
    async with make_engine(reg) as engine:
        h = engine.client().b.get_or_create("x")
        sub = await h.connect(events=["bumped"])
        await h.bump()
        await h.bump()
        got = [await sub.next(timeout=5), await sub.next(timeout=5)]
        assert [(e.name, e.payload) for e in got] == [("bumped", 1), ("bumped", 2)]
        await sub.close()


async def test_engine_fixture_is_a_restart(make_engine):
    """Sanity: two engines on the same file in sequence see the same actors."""
    reg = setup(use={"inbox": _inbox()})
    async with make_engine(reg) as engine:
        await engine.client().inbox.get_or_create("z").resolve()
    async with make_engine(reg) as engine:
        assert isinstance(engine, Engine)
        assert [a.key for a in await engine.list_actors("inbox")] == [["z"]]
