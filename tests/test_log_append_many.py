"""``ActorLog.append_many``: several entries, numbered in order, in one commit."""

from __future__ import annotations

from orchestrator import actor, setup


async def test_append_many_numbers_in_order_and_survives_restart(make_engine):
    async def many(c, items):
        return await c.log("s").append_many(items)

    async def one(c, item):
        return await c.log("s").append(item)

    async def read(c, since):
        return [list(r) for r in await c.log("s").read(since)]

    reg = setup(use={"l": actor(actions={"many": many, "one": one, "read": read})})
    async with make_engine(reg) as engine:
        h = engine.client().l.get_or_create("x")
        assert await h.one({"i": 0}) == 1
        assert await h.many([{"i": 1}, {"i": 2}, {"i": 3}]) == [2, 3, 4]
        assert await h.many([]) == []
        assert await h.one({"i": 4}) == 5
    async with make_engine(reg) as engine:  # numbers continue after a restart
        h = engine.client().l.get_or_create("x")
        assert await h.many([{"i": 5}, {"i": 6}]) == [6, 7]
        assert await h.read(0) == [[n, {"i": n - 1}] for n in range(1, 8)]


async def test_append_many_refuses_what_is_not_json_and_writes_nothing(make_engine):
    from orchestrator.errors import NotSerializable

    async def many(c):
        try:
            await c.log("s").append_many([{"i": 1}, {"bad": object()}])
        except NotSerializable:
            pass
        return [list(r) for r in await c.log("s").read(0)]

    reg = setup(use={"l": actor(actions={"many": many})})
    async with make_engine(reg) as engine:
        assert await engine.client().l.get_or_create("x").many() == []
