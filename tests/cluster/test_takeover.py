"""A host dies or stalls mid-work: another host takes its actors over (lease ttl 2 s),
their workflows and runs finish there, and every step's side effect happens exactly
once; a stalled host that comes back has its writes refused and drops the actor.

Every unit of work (a ``flow`` actor's workflow, a ``job`` run) does ``s0``, waits at
a gate, then ``s1`` and ``s2`` (tests/cluster/registry.py). Hosts are killed or paused
while every unit waits at the gate, so no step with a side effect is in flight."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.hosts import (
    FORWARDED,
    Files,
    Host,
    all_alive,
    files,
    lease_owner,
    start_hosts,
    stop_hosts,
    wait_for,
)


@pytest.fixture
def two_hosts(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, Host, Host, Files]]:
    hosts = start_hosts(pg_url, ["host-a", "host-b"], tmp_path)
    try:
        all_alive(hosts)
        yield pg_url, hosts[0], hosts[1], files(tmp_path)
    finally:
        stop_hosts(hosts)


def _create_on(host: Host, name: str, key: str) -> str:
    with host.http() as c:
        r = c.post(f"/actors/{name}/{key}", json={}, headers={FORWARDED: "test"})
        assert r.status_code == 200, r.text
        return str(r.json()["actor_id"])


def _waiting(f: Files) -> set[str]:
    return {parts[0] for parts in f.lines("marks")}


def _effects(f: Files) -> list[tuple[str, str, str]]:
    return [(p[0], p[1], p[2]) for p in f.lines("effects")]


def _done(f: Files, units: set[str]) -> bool:
    return units <= {u for u, step, _ in _effects(f) if step == "s2"}


def test_a_killed_host_s_workflows_and_runs_finish_elsewhere_exactly_once(
    two_hosts: tuple[str, Host, Host, Files],
) -> None:
    db, a, b, f = two_hosts
    on_a = {f"flow/a{i}": _create_on(a, "flow", f"a{i}") for i in range(4)}
    on_b = {f"flow/b{i}": _create_on(b, "flow", f"b{i}") for i in range(2)}
    job_id = _create_on(a, "job", "j")
    runs = [f"job/j-{i}" for i in range(4)]
    with b.http() as c:  # sent through B, forwarded to A (the job's owner)
        for unit in runs:
            r = c.post("/actors/job/j/queues/work", json={"body": {"unit": unit.split("/")[1]}})
            assert r.status_code == 200, r.text
    units = set(on_a) | set(on_b) | set(runs)
    wait_for(lambda: _waiting(f), lambda w: units <= w, what="every unit at the gate")

    # A schedule A armed (and only A: it was made after B started) fires on B.
    _create_on(a, "counter", "sched")
    with a.http() as c:
        r = c.post("/actors/counter/sched/actions/later", json={"args": [4.0]})
        assert r.status_code == 200, r.text
    a.kill()
    # Within about a ttl, B owns everything A owned and has woken it.
    for actor_id in [*on_a.values(), job_id]:
        wait_for(lambda i=actor_id: lease_owner(db, i), lambda o: o == "host-b", what="takeover")  # type: ignore[misc]
    f.gate.touch()
    wait_for(lambda: _done(f, units), what="every unit finished", timeout=60)
    wait_for(
        lambda: [e for e in _effects(f) if e[0] == "counter/sched"],
        what="the schedule fired",
    )

    effects = _effects(f)
    assert [e for e in effects if e[0] == "counter/sched"] == [("counter/sched", "tick", "host-b")]
    effects = [e for e in effects if e[0] != "counter/sched"]
    counts = collections.Counter((u, s) for u, s, _ in effects)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    assert set(counts) == {(u, s) for u in units for s in ("s0", "s1", "s2")}
    hosts = {(u, s): h for u, s, h in effects}
    for unit in set(on_a) | set(runs):
        assert hosts[(unit, "s0")] == "host-a" and hosts[(unit, "s2")] == "host-b", unit

    with b.http() as c:
        listed = c.get("/actors/job/j/runs").json()["runs"]
        assert sorted(r["status"] for r in listed) == ["completed"] * 4, listed
        for key in ["a0", "a1", "a2", "a3", "b0", "b1"]:
            info = c.get(f"/actors/flow/{key}").json()
            assert info["workflow_status"] == "completed", info
        view = c.get("/cluster").json()
    dead = {h["host_id"]: h for h in view["hosts"]}["host-a"]
    assert not dead["alive"]


def test_a_stalled_host_is_fenced_and_drops_the_actor(
    two_hosts: tuple[str, Host, Host, Files],
) -> None:
    db, a, b, f = two_hosts
    actor_id = _create_on(a, "flow", "fenced")
    unit = "flow/fenced"
    wait_for(lambda: _waiting(f), lambda w: unit in w, what="the flow at the gate")

    a.pause()  # SIGSTOP: A believes it still owns the flow; its lease runs out
    try:
        wait_for(lambda: lease_owner(db, actor_id), lambda o: o == "host-b", what="takeover")
        # B replayed s0 from the history and waits at the gate too.
        wait_for(
            lambda: [p for p in f.lines("marks") if p[0] == unit and p[2] == "host-b"],
            what="B at the gate",
        )
        f.gate.touch()
        wait_for(lambda: _done(f, {unit}), what="B finished the flow")
    finally:
        a.resume()  # SIGCONT: A's gate step returns; its commit must be refused

    log = wait_for(
        lambda: a.log(),
        lambda log: f"lease of actor {actor_id} lost" in log,
        what="A dropped the actor",
    )
    # The gate step's commit was queued before anything could drop the actor: the
    # store refused it (logged by the cluster's watcher, or by the store when the
    # drop had already cancelled the waiting step).
    refused = (f"write refused for actor {actor_id}", f"no longer holds the lease of {actor_id}")
    assert any(r in log for r in refused), log
    effects = [(s, h) for u, s, h in _effects(f) if u == unit]
    assert effects == [("s0", "host-a"), ("s1", "host-b"), ("s2", "host-b")], effects
    assert lease_owner(db, actor_id) == "host-b"
    with b.http() as c:
        info = c.get("/actors/flow/fenced").json()
        assert info["workflow_status"] == "completed", info
        history = c.get("/actors/flow/fenced/inspector/workflow-history").json()
    paths = [e["path"] for e in history["entries"]]
    assert len(paths) == len(set(paths)), paths  # nothing recorded twice
    assert {"s0", "gate", "s1", "s2"} <= {p.rsplit("/", 1)[-1] for p in paths}


@pytest.mark.slow
def test_a_dead_host_s_actors_spread_over_the_survivors(pg_url: str, tmp_path: Path) -> None:
    """Three hosts; the one holding 30 parked workflows is killed: both survivors take
    a share (each claims at most its share per beat), and every workflow finishes once."""
    hosts = start_hosts(pg_url, ["host-a", "host-b", "host-c"], tmp_path)
    try:
        all_alive(hosts)
        a = hosts[0]
        f = files(tmp_path)
        ids = {f"flow/s{i}": _create_on(a, "flow", f"s{i}") for i in range(30)}
        wait_for(lambda: _waiting(f), lambda w: set(ids) <= w, what="every flow at the gate")
        a.kill()
        owners = wait_for(
            lambda: {lease_owner(pg_url, i) for i in ids.values()},
            lambda o: o <= {"host-b", "host-c"},
            what="takeover",
        )
        assert owners == {"host-b", "host-c"}, owners
        f.gate.touch()
        wait_for(lambda: _done(f, set(ids)), what="every flow finished", timeout=60)
        counts = collections.Counter((u, s) for u, s, _ in _effects(f))
        assert set(counts.values()) == {1}
        assert len(counts) == 3 * len(ids)
    finally:
        stop_hosts(hosts)
