"""The store contract, against both stores: every op and read, atomic batches, order
of submissions, a bad submission failing alone, typed errors. Real SQLite files and a
real PostgreSQL server (tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ActorAlreadyExists, StorageFull
from orchestrator.storage import (
    ActorRecord,
    HistoryRecord,
    LogRecord,
    MessageRecord,
    PostgresStore,
    RunRecord,
    ScheduleRecord,
    SQLiteStore,
    Store,
    base,
    open_store,
)
from orchestrator.storage import postgres as pg
from tests.support.postgres import PgServer

Factory = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory of stores on one empty database (a second store is a restart)."""
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        return lambda: SQLiteStore(path)
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.store_url()
    return lambda: PostgresStore(url, pool_size=2)


@pytest.fixture
async def store(new_store: Factory) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _actor(actor_id: str, name: str = "counter", *, key: tuple[str, ...] = ()) -> ActorRecord:
    return ActorRecord(actor_id, name, key or (actor_id,), '{"n":0}', "null", time.time())


def _h(path: str, seq: int, status: str = "completed", output: str | None = "1") -> HistoryRecord:
    return HistoryRecord(path, "step", status, 1, 1.5, 2.25, output, None, None, seq)


def _run(run_id: int, actor_id: str, status: str = "queued") -> RunRecord:
    return RunRecord(run_id, actor_id, "jobs", status, '{"x":1}', 1000.0 + run_id)


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a.db")), SQLiteStore)
    for url in ("postgresql://u@h:5432/db", "postgres://u@h/db"):
        s = open_store(url, pool_size=3)
        assert isinstance(s, PostgresStore) and s.supports_leases and s.pool_size == 3
    assert not SQLiteStore(tmp_path / "b.db").supports_leases
    with pytest.raises(ValueError, match="pool_size"):
        PostgresStore("postgresql://u@h/db", pool_size=0)


async def test_actor_rows(store: Store) -> None:
    a = _actor("a1", key=("x", "y"))
    a.created_at = 1733085297.123456789  # a double survives exactly
    b = _actor("b1", "other")
    await store.submit([(base.PUT_ACTOR, a), (base.PUT_ACTOR, b)])
    found = await store.find_actor("counter", ("x", "y"))
    assert found is not None and found.actor_id == "a1" and found.created_at == a.created_at
    assert found.key == ("x", "y") and found.state == '{"n":0}' and not found.sleeping
    assert await store.find_actor("counter", ("x",)) is None
    assert [r.actor_id for r in await store.list_actors()] == ["a1", "b1"]
    assert [r.actor_id for r in await store.list_actors("other")] == ["b1"]

    tricky = '{"s":"quote \\" backslash \\\\ nul \\u0000 ünï 😀"}'
    store.submit_nowait([(base.SET_STATE, "a1", tricky)])
    store.submit_nowait([(base.SET_WORKFLOW, "a1", "failed", None, '{"code":"x"}')])
    store.submit_nowait([(base.SET_SLEEP, "a1", True, 99.5)])
    got = await store.get_actor("a1")  # a read sees the writes submitted before it
    assert got is not None and got.state == tricky and got.sleeping and got.alarm_at == 99.5
    assert (got.workflow_status, got.workflow_output, got.workflow_error) == (
        "failed",
        None,
        '{"code":"x"}',
    )
    # Awake, or asleep with an alarm, are recovered; asleep without one is not.
    await store.submit([(base.SET_SLEEP, "b1", True, None)])
    assert [r.actor_id for r in await store.actors_to_recover()] == ["a1"]
    await store.submit([(base.SET_SLEEP, "a1", False, None)])
    assert [r.actor_id for r in await store.actors_to_recover()] == ["a1"]
    assert await store.get_actor("nope") is None


async def test_history_trees_and_runs_scope(store: Store) -> None:
    await store.submit([(base.PUT_ACTOR, _actor("a"))])
    paths = ["s", "s/1", "s/1/x", "s0", "sa", "t", "~run/7/step", "~run/70/step"]
    await store.submit(
        [(base.PUT_HISTORY, "a", _h(p, store.next_seq())) for p in paths]
        + [(base.PUT_RUN, _run(7, "a", "running")), (base.PUT_RUN, _run(70, "a", "completed"))]
    )
    main = await store.load_history("a")
    assert [h.path for h in main] == ["s", "s/1", "s/1/x", "s0", "sa", "t"]
    assert main[0] == _h("s", main[0].seq)
    assert [h.path for h in await store.load_run_history("a", 7)] == ["~run/7/step"]
    assert [h.path for h in await store.load_run_history("a", 70)] == ["~run/70/step"]
    # Replacing an entry keeps one row with the new fields.
    await store.submit([(base.PUT_HISTORY, "a", _h("t", 9_999_999, "failed", None))])
    assert (await store.load_history("a"))[-1] == _h("t", 9_999_999, "failed", None)
    # A subtree goes; its byte-order neighbours ("s0", "sa") stay.
    await store.submit([(base.DELETE_HISTORY_TREE, "a", "s")])
    assert [h.path for h in await store.load_history("a")] == ["s0", "sa", "t"]
    await store.submit([(base.CLEAR_HISTORY, "a")])
    assert await store.load_history("a") == []
    assert await store.load_run_history("a", 7) == []


async def test_messages_schedules_and_logs(store: Store) -> None:
    await store.submit([(base.PUT_ACTOR, _actor("a")), (base.PUT_ACTOR, _actor("b"))])
    ids = [store.next_message_id() for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    msgs = [MessageRecord(i, "a", "q", f'{{"i":{i}}}', 5.0) for i in ids]
    await store.submit([(base.PUT_MESSAGE, m) for m in reversed(msgs)])
    assert await store.load_messages("a") == msgs
    await store.submit([(base.DELETE_MESSAGE, ids[1])])
    assert [m.message_id for m in await store.load_messages("a")] == [ids[0], ids[2]]
    assert await store.load_messages("b") == []

    s1, s2 = store.next_schedule_id(), store.next_schedule_id()
    late = ScheduleRecord(s1, "a", 200.0, "ping", "[]", 1.0)
    soon = ScheduleRecord(s2, "b", 100.0, "pong", '["x"]', 1.0)
    await store.submit([(base.PUT_SCHEDULE, late), (base.PUT_SCHEDULE, soon)])
    assert await store.load_schedules() == [soon, late]
    assert await store.load_schedules("a") == [late]
    await store.submit([(base.DELETE_SCHEDULE, s2)])
    assert await store.load_schedules() == [late]

    assert await store.last_log_seq("a", "events") == 0
    logs = [LogRecord("a", "events", n, f'{{"n":{n}}}', 3.0) for n in range(1, 6)]
    await store.submit([(base.APPEND_LOG, lg) for lg in logs])
    await store.submit([(base.APPEND_LOG, LogRecord("a", "other", 1, "{}", 3.0))])
    assert await store.read_log("a", "events") == logs
    assert await store.read_log("a", "events", since=2, limit=2) == logs[2:4]
    assert await store.last_log_seq("a", "events") == 5
    compact = LogRecord("a", "events", 5, '{"all":5}', 4.0)
    await store.submit([(base.REPLACE_LOG, compact)])
    assert await store.read_log("a", "events") == [compact]
    assert len(await store.read_log("a", "other")) == 1
    await store.submit([(base.SET_META, "k", "v1"), (base.SET_META, "k", "v2")])


async def test_runs_snapshots_prune_and_delete(store: Store) -> None:
    await store.submit(
        [(base.PUT_ACTOR, _actor("a", key=("k",))), (base.PUT_ACTOR, _actor("b", "other"))]
    )
    runs = [_run(i, "a", st) for i, st in ((1, "completed"), (2, "failed"), (3, "running"))]
    runs.append(_run(4, "a"))
    runs.append(_run(5, "b", "completed"))
    await store.submit([(base.PUT_RUN, r) for r in runs])
    await store.submit(
        [(base.PUT_HISTORY, "a", _h(f"~run/{i}/s", 10 + i)) for i in (1, 2, 3)]
        + [(base.PUT_HISTORY, "a", _h("main", 1))]
        + [(base.PUT_MESSAGE, MessageRecord(4, "a", "jobs", "{}", 1.0))]
    )
    listed = await store.list_runs()
    assert [r.run_id for r in listed] == [5, 4, 3, 2, 1]
    assert listed[1].name == "counter" and listed[1].key == ("k",)
    assert [r.run_id for r in await store.list_runs("a", status="completed")] == [1]
    assert [r.run_id for r in await store.list_runs(name="counter", limit=2)] == [4, 3]
    got = await store.get_run("a", 3)
    assert got is not None and got.status == "running" and got.input == '{"x":1}'
    assert await store.get_run("b", 3) is None

    snaps = await store.load_snapshots(["a", "b", "missing"])
    assert set(snaps) == {"a", "b"}
    snap = snaps["a"]
    assert [h.path for h in snap.history] == ["main"]
    assert [r.run_id for r in snap.runs] == [3, 4]  # unfinished only, oldest first
    assert {k: [h.path for h in v] for k, v in snap.run_history.items()} == {
        3: ["~run/3/s"],
        4: [],
    }
    assert [m.message_id for m in snap.messages] == [4]

    # Finished runs beyond the newest one lose their history; the rows stay.
    await store.submit([(base.PRUNE_RUN_HISTORY, "a", 1)])
    assert await store.load_run_history("a", 1) == []
    assert len(await store.load_run_history("a", 2)) == 1
    assert len(await store.load_run_history("a", 3)) == 1
    assert len(await store.list_runs("a")) == 4
    # Replacing a run updates it in place.
    done = _run(3, "a", "completed")
    done.result = '"ok"'
    await store.submit([(base.PUT_RUN, done)])
    got = await store.get_run("a", 3)
    assert got is not None and got.status == "completed" and got.result == '"ok"'

    await store.submit([(base.DELETE_ACTOR, "a")])
    assert await store.get_actor("a") is None
    assert await store.list_runs("a") == [] and await store.load_messages("a") == []
    assert await store.load_snapshots(["a"]) == {}
    assert [r.run_id for r in await store.list_runs()] == [5]


async def test_a_bad_submission_fails_alone_and_applies_nothing(store: Store) -> None:
    await store.submit([(base.PUT_ACTOR, _actor("a"))])
    # One tick: a good submission, a bad one (its first op is fine), another good one.
    first = store.submit([(base.SET_STATE, "a", '{"n":1}')])
    bad = store.submit([(base.SET_STATE, "a", '{"n":666}'), (base.PUT_ACTOR, _actor("a"))])
    last = store.submit([(base.PUT_HISTORY, "a", _h("s", store.next_seq()))])
    results = await asyncio.gather(first, bad, last, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)
    if isinstance(store, PostgresStore):
        assert isinstance(results[1], ActorAlreadyExists)
    rec = await store.get_actor("a")
    assert rec is not None and rec.state == '{"n":1}'
    assert [h.path for h in await store.load_history("a")] == ["s"]


async def test_submissions_commit_in_order(store: Store) -> None:
    await store.submit([(base.PUT_ACTOR, _actor("a"))])
    for n in range(200):
        store.submit_nowait([(base.SET_STATE, "a", f'{{"n":{n}}}')])
    await store.flush()
    rec = await store.get_actor("a")
    assert rec is not None and rec.state == '{"n":199}'
    # Across ticks, and with awaited submissions in between.
    for n in range(20):
        store.submit_nowait([(base.PUT_HISTORY, "a", _h("p", n, output=str(n)))])
        if n % 3 == 0:
            await asyncio.sleep(0)
        if n % 7 == 0:
            await store.submit([])
    hist = await store.load_history("a")
    assert [(h.path, h.output) for h in hist] == [("p", "19")]


async def test_ids_are_unique_and_increase_across_a_restart(new_store: Factory) -> None:
    first = new_store()
    await first.open()
    try:
        ids = [first.next_message_id() for _ in range(2500)]  # more than two blocks
        seqs = [first.next_seq() for _ in range(10)]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert seqs == sorted(seqs)
        await first.submit([(base.PUT_ACTOR, _actor("a"))])
        await first.submit([(base.PUT_MESSAGE, MessageRecord(ids[-1], "a", "q", "{}", 1.0))])
    finally:
        await first.close()
    second = new_store()
    await second.open()
    try:
        assert second.next_message_id() > ids[-1]
        assert second.next_schedule_id() > 0
    finally:
        await second.close()


def test_database_errors_become_typed_errors() -> None:
    class Full(Exception):
        sqlstate = "53100"

    class Dup(Exception):
        sqlstate = "23505"
        table_name = "actors"

    class Other(Exception):
        sqlstate = "23505"
        table_name = "runs"

    assert isinstance(pg._typed(Full("disk full")), StorageFull)
    assert isinstance(pg._typed(Dup("dup")), ActorAlreadyExists)
    other = Other("x")
    assert pg._typed(other) is other


async def test_postgres_newer_schema_is_refused(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    s = PostgresStore(url, pool_size=1)
    await s.open()
    await s.pool.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    await s.close()
    again = PostgresStore(url, pool_size=1)
    with pytest.raises(RuntimeError, match="newer agentvm"):
        await again.open()
    await again.close()


async def test_a_value_the_database_rejects_fails_alone(store: Store) -> None:
    await store.submit([(base.PUT_ACTOR, _actor("a"))])
    nan = ScheduleRecord(store.next_schedule_id(), "a", float("nan"), "ping", "[]", 1.0)
    good = store.submit([(base.SET_STATE, "a", '{"n":5}')])
    bad = store.submit([(base.PUT_SCHEDULE, nan)])
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], Exception)
    rec = await store.get_actor("a")
    assert rec is not None and rec.state == '{"n":5}'
    assert await store.load_schedules() == []


async def test_postgres_group_commit_is_one_round_trip(pg_server: PgServer) -> None:
    store = PostgresStore(pg_server.store_url(), pool_size=1)
    await store.open()
    try:
        calls: list[int] = []
        commit = store._commit

        async def counted(batch: list[Any]) -> None:
            calls.append(len(batch))
            await commit(batch)

        store._commit = counted  # type: ignore[method-assign]
        await store.submit([(base.PUT_ACTOR, _actor("a"))])
        futs = [store.submit([(base.SET_STATE, "a", f'{{"n":{n}}}')]) for n in range(100)]
        await asyncio.gather(*futs)
        assert calls == [1, 100]  # the tick's 100 submissions: one commit
        rec = await store.get_actor("a")
        assert rec is not None and rec.state == '{"n":99}'
    finally:
        await store.close()


async def test_postgres_writer_reconnects_after_its_connection_dies(pg_server: PgServer) -> None:
    store = PostgresStore(pg_server.store_url(), pool_size=1)
    await store.open()
    try:
        await store.submit([(base.PUT_ACTOR, _actor("a"))])
        assert store._conn is not None
        pid = store._conn.get_server_pid()
        await store.pool.execute("SELECT pg_terminate_backend($1)", pid)
        # A write that meets the dead connection fails (its outcome is unknown to the
        # caller) unless the loss was noticed first; either way the writer reconnects.
        with contextlib.suppress(Exception):
            await store.submit([(base.SET_STATE, "a", '{"n":1}')])
        await store.submit([(base.SET_STATE, "a", '{"n":2}')])
        rec = await store.get_actor("a")
        assert rec is not None and rec.state == '{"n":2}'
    finally:
        await store.close()
