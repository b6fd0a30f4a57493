"""Leases and fencing at the store level: two PostgresStore objects ("hosts") on one
real PostgreSQL database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from orchestrator.errors import LeaseLost
from orchestrator.storage import ActorRecord, PostgresStore, base
from tests.support import eventually
from tests.support.postgres import PgServer


def _actor(actor_id: str) -> ActorRecord:
    return ActorRecord(actor_id, "counter", (actor_id,), "{}", "null", time.time())


@pytest.fixture
async def hosts(pg_server: PgServer) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    url = pg_server.store_url()
    a, b = PostgresStore(url, pool_size=2), PostgresStore(url, pool_size=2)
    await a.open()
    await b.open()
    await a.heartbeat("A", "http://a", "eng", {"actors": 1})
    await b.heartbeat("B", "http://b", "eng", {"actors": 0})
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_a_host_that_lost_its_lease_cannot_commit(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = hosts
    await a.submit([(base.PUT_ACTOR, _actor("x"))])
    got = await a.acquire_lease("x", "A", ttl=0.2)
    assert got.acquired and got.token is not None
    a.fence("x", got.token)
    # Held by A: B is told who the owner is.
    refused = await b.acquire_lease("x", "B", ttl=5)
    assert not refused.acquired and refused.owner_host_id == "A"
    assert refused.owner_url == "http://a"
    # Already ours: the same token.
    again = await a.acquire_lease("x", "A", ttl=0.2)
    assert again.acquired and again.token == got.token
    await a.submit([(base.SET_STATE, "x", '{"n":1}')])

    # A stops renewing; once the lease expires B takes it with a new token.
    taken = await eventually(
        lambda: b.acquire_lease("x", "B", ttl=30), lambda r: r.acquired, what="takeover"
    )
    assert taken.token is not None and taken.token > got.token
    b.fence("x", taken.token)

    # A's next commit is refused and applies nothing; an unfenced write in the same
    # group commit still lands.
    hid = a.next_seq()
    fenced = a.submit(
        [
            (base.SET_STATE, "x", '{"n":2}'),
            (base.PUT_HISTORY, "x", base.HistoryRecord("s", "step", "completed", seq=hid)),
        ]
    )
    other = a.submit([(base.SET_META, "k", "v")])
    with pytest.raises(LeaseLost) as info:
        await fenced
    await other
    assert info.value.code == "lease_lost" and info.value.metadata["actor_id"] == "x"
    rec = await b.get_actor("x")
    assert rec is not None and rec.state == '{"n":1}'
    assert await b.load_history("x") == []
    # A's renewal no longer covers x.
    assert "x" not in await a.renew_leases("A", ttl=5)

    # B's writes land.
    await b.submit([(base.SET_STATE, "x", '{"n":3}')])
    rec = await a.get_actor("x")
    assert rec is not None and rec.state == '{"n":3}'
    info2 = await a.lease_of("x")
    assert info2 is not None and info2.host_id == "B" and info2.token == taken.token
    assert info2.alive and info2.url == "http://b"


async def test_hosts_orphans_and_release(hosts: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = hosts
    await a.submit([(base.PUT_ACTOR, _actor("y")), (base.PUT_ACTOR, _actor("z"))])
    sleeping = _actor("s")
    sleeping.sleeping = True
    await a.submit([(base.PUT_ACTOR, sleeping)])
    # Awake actors without a lease need an owner; a sleeping one without alarm does not.
    assert {r.actor_id for r in await b.orphaned_actors(ttl=5)} == {"y", "z"}
    y = await a.acquire_lease("y", "A", ttl=30)
    z = await a.acquire_lease("z", "A", ttl=30)
    assert y.acquired and z.acquired
    assert await b.orphaned_actors(ttl=5) == []
    assert await a.renew_leases("A", ttl=30) == {"y", "z"}
    hosts_now = {h.host_id: h for h in await b.list_hosts(ttl=5)}
    assert hosts_now["A"].alive and hosts_now["A"].leases == 2
    assert hosts_now["A"].load == {"actors": 1} and hosts_now["B"].leases == 0

    assert z.token is not None
    await a.release_lease("z", "A", z.token)
    assert [r.actor_id for r in await b.orphaned_actors(ttl=5)] == ["z"]
    assert await a.lease_of("z") is None

    # A clean stop releases everything and marks the host stopped, not alive.
    await a.host_stopped("A")
    hosts_now = {h.host_id: h for h in await b.list_hosts(ttl=5)}
    assert hosts_now["A"].stopped and not hosts_now["A"].alive
    assert hosts_now["A"].leases == 0
    assert {r.actor_id for r in await b.orphaned_actors(ttl=5)} == {"y", "z"}
    took = await b.acquire_lease("y", "B", ttl=30)
    assert took.acquired and y.token is not None and took.token is not None
    assert took.token > y.token


async def test_a_dead_hosts_leases_are_orphaned_once_its_heartbeat_is_old(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = hosts
    await a.submit([(base.PUT_ACTOR, _actor("w"))])
    assert (await a.acquire_lease("w", "A", ttl=60)).acquired
    assert await b.orphaned_actors(ttl=60) == []
    # A stops heartbeating: with a short ttl its host counts as dead.
    orphans = await eventually(lambda: b.orphaned_actors(ttl=0.2), what="dead host's actors")
    assert [r.actor_id for r in orphans] == ["w"]
    alive = {h.host_id: h.alive for h in await b.list_hosts(ttl=0.2)}
    assert alive["A"] is False


async def test_migrations_apply_once_for_hosts_starting_together(pg_url: str) -> None:
    import asyncio

    stores = [PostgresStore(pg_url, pool_size=1) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        rows = await stores[0].pool.fetch("SELECT version FROM schema_migrations")
        assert [r[0] for r in rows] == [1]
        ids = {s.next_message_id() for s in stores}
        assert len(ids) == 3  # blocks are per host: unique across hosts
    finally:
        for s in stores:
            await s.close()


async def test_a_new_owner_numbers_after_the_previous_owner(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    """Ids come in per-host blocks; after a takeover the new owner's history seqs and
    message ids must still sort after the old owner's (replay and queue order)."""
    a, b = hosts
    # Push A's blocks above B's: B opened second but A reserves fresh blocks now.
    for _ in range(3000):
        a.next_seq()
        a.next_message_id()
    seq, mid = a.next_seq(), a.next_message_id()
    assert seq > b.next_seq() and mid > b.next_message_id()
    await a.submit([(base.PUT_ACTOR, _actor("t"))])
    await a.submit(
        [
            (base.PUT_HISTORY, "t", base.HistoryRecord("s", "step", "completed", seq=seq)),
            (base.PUT_MESSAGE, base.MessageRecord(mid, "t", "q", "{}", 1.0)),
        ]
    )
    await b.load_snapshots(["t"])  # B wakes it (takes it over)
    assert b.next_seq() > seq and b.next_message_id() > mid


async def test_a_refused_write_calls_the_lease_lost_hook(
    hosts: tuple[PostgresStore, PostgresStore],
) -> None:
    """``on_lease_lost`` names the fenced actor of a refused submission, also for a
    fire-and-forget ``submit_nowait`` (no future to carry the refusal), and only it."""
    a, b = hosts
    await a.submit([(base.PUT_ACTOR, _actor("f")), (base.PUT_ACTOR, _actor("g"))])
    mine = await a.acquire_lease("f", "A", ttl=60)
    assert mine.acquired and mine.token is not None
    a.fence("f", mine.token)
    lost: list[str] = []
    a.on_lease_lost = lost.append
    await a.submit([(base.SET_STATE, "f", '{"n":1}')])
    assert lost == []  # held: nothing refused

    # B steals the lease (as if A's renewals came late): A's token is stale.
    await b.pool.execute("UPDATE leases SET expires_at = 0 WHERE actor_id = 'f'")
    taken = await b.acquire_lease("f", "B", ttl=60)
    assert taken.acquired

    a.submit_nowait([(base.SET_STATE, "f", '{"n":2}'), (base.SET_STATE, "g", '{"n":2}')])
    await a.flush()  # commits what was submitted before it
    assert lost == ["f"]  # g is not fenced: it is not named
    with pytest.raises(LeaseLost):
        await a.submit([(base.SET_STATE, "f", '{"n":3}')])
    assert lost == ["f", "f"]
    rec = await b.get_actor("f")
    assert rec is not None and rec.state == '{"n":1}'
