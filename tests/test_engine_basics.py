"""Basic actor behaviour: create/get/destroy, state, actions, queues, limits."""

from __future__ import annotations

import pytest

from orchestrator import (
    ActionNotFound,
    ActorAlreadyExists,
    ActorNotFound,
    InvalidRequest,
    MessageTooLarge,
    NotSerializable,
    QueueFull,
    QueueNotFound,
    actor,
    queue,
    setup,
)


def _counter():
    async def increment(c, by=1):
        c.state["value"] += by
        return c.state["value"]

    def boom(c):
        c.state["value"] = -999
        raise RuntimeError("boom")

    return actor(
        state={"value": 0},
        actions={"increment": increment, "get": lambda c: c.state["value"], "boom": boom},
        queues={"jobs": queue()},
    )


async def test_get_or_create_state_and_restart(make_engine):
    reg = setup(use={"counter": _counter()})
    async with make_engine(reg) as engine:
        h = engine.client().counter.get_or_create("main")
        assert await h.increment(2) == 2
        assert await h.increment(3) == 5
        # A string key and a one-element list name the same actor.
        assert await engine.client().counter.get_or_create(["main"]).get() == 5
    async with make_engine(reg) as engine:
        assert await engine.client().counter.get("main").get() == 5


async def test_failed_action_changes_nothing(make_engine):
    reg = setup(use={"counter": _counter()})
    async with make_engine(reg) as engine:
        h = engine.client().counter.get_or_create("k")
        await h.increment(1)
        with pytest.raises(RuntimeError):
            await h.boom()
        assert await h.get() == 1
        assert await h.fetch_state() == {"value": 1}


async def test_create_get_destroy_errors(make_engine):
    reg = setup(use={"counter": _counter()})
    async with make_engine(reg) as engine:
        c = engine.client()
        with pytest.raises(ActorNotFound):
            await c.counter.get("nobody").get()
        h = await c.counter.create(["a", "b"])
        with pytest.raises(ActorAlreadyExists):
            await c.counter.create(["a", "b"])
        with pytest.raises(ActionNotFound) as err:
            await h.nope()
        assert "nope" in str(err.value)
        with pytest.raises(InvalidRequest):
            c.counter.get_or_create([1, 2])
        await h.destroy()
        with pytest.raises(ActorNotFound):
            await c.counter.get(["a", "b"]).get()


async def test_queue_limits_refuse_and_store_nothing(make_engine):
    reg = setup(use={"counter": _counter()})
    async with make_engine(reg, max_queue_length=3, max_message_size=100) as engine:
        h = engine.client().counter.get_or_create("q")
        with pytest.raises(MessageTooLarge):
            await h.send("jobs", {"x": "y" * 200})
        with pytest.raises(QueueNotFound):
            await h.send("nope", {})
        with pytest.raises(NotSerializable):
            await h.send("jobs", {"x": object()})
        for i in range(3):
            await h.send("jobs", {"i": i})
        with pytest.raises(QueueFull):
            await h.send("jobs", {"i": 3})
        contents = await h.queue_contents()
        assert [m.body for m in contents] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_keyword_options_travel_as_a_trailing_object(make_engine):
    def echo(c, *args):
        return list(args)

    reg = setup(use={"e": actor(actions={"echo": echo})})
    async with make_engine(reg) as engine:
        h = engine.client().e.get_or_create("x")
        assert await h.echo("ls", cwd="/tmp") == ["ls", {"cwd": "/tmp"}]
        assert await h.echo("ls") == ["ls"]


async def test_hold_keeps_an_actor_awake(make_engine):
    held: dict = {}

    def grab(c):
        held["release"] = c.hold()

    def release(c):
        held.pop("release")()

    reg = setup(use={"h": actor(actions={"grab": grab, "release": release, "ping": lambda c: 1})})
    async with make_engine(reg, sleep_timeout=0.01) as engine:
        h = engine.client().h.get_or_create("x")
        actor_id = await h.resolve()
        await h.grab()
        inst = engine.instances[actor_id]
        assert not inst.is_idle()
        await h.release()
        from tests.support import eventually

        async def awake():
            return actor_id in engine.instances

        assert await eventually(awake, lambda v: not v, what="actor asleep") is False


async def test_actor_logs_are_numbered_and_survive_restart(make_engine):
    async def note(c, text):
        return await c.log("notes").append({"text": text})

    async def notes(c, since=0):
        return await c.log("notes").read(since)

    reg = setup(use={"n": actor(actions={"note": note, "notes": notes})})
    async with make_engine(reg) as engine:
        h = engine.client().n.get_or_create("x")
        assert [await h.note("a"), await h.note("b")] == [1, 2]
    async with make_engine(reg) as engine:
        h = engine.client().n.get_or_create("x")
        assert await h.note("c") == 3
        assert await h.notes(1) == [(2, {"text": "b"}), (3, {"text": "c"})]


async def test_queue_body_model_refuses_malformed_messages(make_engine):
    from pydantic import BaseModel

    class Job(BaseModel):
        repo: str
        attempts: int = 1

    reg = setup(use={"w": actor(queues={"jobs": queue(body=Job)})})
    async with make_engine(reg) as engine:
        h = engine.client().w.get_or_create("x")
        with pytest.raises(InvalidRequest) as err:
            await h.send("jobs", {"attempts": "many"})
        assert err.value.metadata["field"] == "body.repo"
        assert await h.queue_contents() == []
        assert (await h.send("jobs", {"repo": "r"})).status == "queued"


async def test_a_log_compacts_to_one_entry_keeping_its_numbering(make_engine):
    async def write(c, n):
        for i in range(n):
            await c.log("s").append({"i": i})
        return await c.log("s").compact({"summary": n})

    async def read(c, since):
        return [list(r) for r in await c.log("s").read(since)]

    async def more(c):
        return await c.log("s").append({"i": "next"})

    reg = setup(use={"logger": actor(actions={"write": write, "read": read, "more": more})})
    async with make_engine(reg) as engine:
        h = engine.client().logger.get_or_create("a")
        assert await h.write(5) == 5
        assert await h.read(0) == [[5, {"summary": 5}]]
        assert await h.read(5) == []
        assert await h.more() == 6
    async with make_engine(reg) as engine:  # after a restart: the same log
        h = engine.client().logger.get_or_create("a")
        assert await h.read(0) == [[5, {"summary": 5}], [6, {"i": "next"}]]


async def test_stop_lets_a_running_scheduled_action_unwind_before_the_store_closes(make_engine):
    import asyncio

    started = asyncio.Event()

    async def slow(c):
        started.set()
        c.state["value"] = 1
        await asyncio.sleep(3600)

    async def arm(c):
        await c.schedule.after(0, "slow")

    reg = setup(use={"a": actor(state={"value": 0}, actions={"slow": slow, "arm": arm})})
    async with make_engine(reg) as engine:
        await engine.client().a.get_or_create(["k"]).arm()
        await asyncio.wait_for(started.wait(), 30)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    # Every task the engine spawned has finished: nothing waits on the closed store.
    leftover = [t for t in pending if not t.done()]
    assert leftover == [], leftover
