"""Lease churn on a surviving host (late renewals under load, issue 14 §2): two
in-process engines ("hosts") on one real PostgreSQL database; the test moves a lease
away mid-flight as a late renewal would, instead of stalling a process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator import Engine
from orchestrator.errors import LeaseLost
from tests.cluster.registry import build
from tests.support import eventually
from tests.support.postgres import PgServer


@pytest.fixture
async def two_engines(pg_server: PgServer) -> AsyncIterator[tuple[Engine, Engine]]:
    url = pg_server.store_url()
    # A long ttl: the beat (every ttl/3) never runs during the test, so whatever is
    # dropped or re-read happens because of the refused write or the call itself.
    a = Engine(build(), db=url, host_id="host-a", lease_ttl=60)
    b = Engine(build(), db=url, host_id="host-b", lease_ttl=60)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def _steal(thief: Engine, actor_id: str) -> None:
    """The owner's lease expires (its renewal came late) and ``thief`` claims it."""
    store: object = thief.store
    await store.pool.execute(  # type: ignore[attr-defined]
        "UPDATE leases SET expires_at = 0 WHERE actor_id = $1", actor_id
    )
    assert thief.cluster is not None
    await thief.cluster.claim(actor_id)


async def test_a_refused_write_drops_the_actor_and_a_stale_key_is_re_resolved(
    two_engines: tuple[Engine, Engine],
) -> None:
    a, b = two_engines
    assert a.cluster is not None
    old = await a.resolve("counter", "k", create=True)
    assert await a.call(old, "increment", [1]) == 1

    # Host b takes the lease over while a still runs the actor: a's next commit is
    # refused, and a drops the actor at once (not at its next beat, a minute away).
    await _steal(b, old)
    with pytest.raises(LeaseLost):
        await a.call(old, "increment", [1])
    await eventually(
        lambda: _async(old not in a.instances and old not in a.cluster.held),  # type: ignore[union-attr]
        what="host a drops the actor whose write was refused",
    )

    # The new owner destroys it; a's key -> id cache must not name it any more:
    # get_or_create on a creates a new actor instead of failing with ActorNotFound.
    await b.destroy(old)
    new = await a.resolve("counter", "k", create=True)
    assert new != old
    assert await a.call(new, "increment", [5]) == 5
    assert await b.resolve("counter", "k") == new


async def test_a_key_cached_for_an_actor_owned_elsewhere_is_re_read(
    two_engines: tuple[Engine, Engine],
) -> None:
    """A key this host resolved for an actor another host owns may be destroyed and
    re-created there: the cached id of an actor not held here is checked against the
    store."""
    a, b = two_engines
    old = await b.resolve("counter", "s", create=True)
    assert await a.resolve("counter", "s") == old  # cached on a, owned by b
    await b.destroy(old)
    other = await b.resolve("counter", "s", create=True)
    assert other != old
    assert await a.resolve("counter", "s") == other
    assert await a.resolve("counter", "s", create=True) == other


async def test_a_refused_create_leaves_no_cached_id(
    two_engines: tuple[Engine, Engine],
) -> None:
    """The new actor's lease moves between its claim and its creation commit: the
    create fails with ``LeaseLost``, nothing names the id, and the next get_or_create
    creates the actor."""
    a, b = two_engines
    member = a.cluster
    assert member is not None
    claim = member.claim
    stolen: list[str] = []

    async def claim_then_lose(actor_id: str) -> None:
        await claim(actor_id)
        if not stolen:  # the first create only
            stolen.append(actor_id)
            await _steal(b, actor_id)

    member.claim = claim_then_lose  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        await a.resolve("counter", "c", create=True)
    assert stolen and stolen[0] not in a._ids.values()
    assert await b.store.get_actor(stolen[0]) is None  # nothing of it was written
    made = await a.resolve("counter", "c", create=True)
    assert made != stolen[0]
    assert await a.call(made, "increment", [2]) == 2
    assert await b.resolve("counter", "c") == made


async def _async(value: bool) -> bool:
    return value
