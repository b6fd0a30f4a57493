"""SQLiteStore.submit_await: the on-loop ack a workflow step awaits (one loop
iteration instead of a future's two) keeps group commit, per-submission failure and
durability on cancellation, on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.storage import base
from orchestrator.storage.base import MessageRecord
from orchestrator.storage.sqlite import SQLiteStore


def _put(mid: int) -> base.Op:
    return (base.PUT_MESSAGE, MessageRecord(mid, "a", "q", f'{{"i":{mid}}}', time.time()))


@pytest.fixture(params=["NORMAL", "FULL"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "s.db", synchronous=request.param)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_submissions_of_one_tick_share_one_commit_and_are_durable(
    store: SQLiteStore,
) -> None:
    commits: list[str] = []
    if store._writer is not None:  # the on-loop writer: count its COMMITs
        store._writer.set_trace_callback(
            lambda sql: commits.append(sql) if sql == "COMMIT" else None
        )
    await asyncio.gather(*(store.submit_await([_put(i)]) for i in range(1, 51)))
    if store._writer is not None:
        store._writer.set_trace_callback(None)
        assert len(commits) == 1
    # Committed before the awaits returned: another connection sees every row.
    with sqlite3.connect(store.path) as other:
        assert other.execute("SELECT COUNT(*) FROM queue_messages").fetchone()[0] == 50


async def test_a_failing_submission_fails_alone(store: SQLiteStore) -> None:
    await store.submit_await([_put(1)])
    results = await asyncio.gather(
        store.submit_await([_put(2)]),
        store.submit_await([_put(1)]),  # duplicate primary key
        store.submit_await([_put(3)]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert [m.message_id for m in await store.load_messages("a")] == [1, 2, 3]
    # Alone in its commit (one statement, no BEGIN/COMMIT around it): the same.
    with pytest.raises(sqlite3.IntegrityError):
        await store.submit_await([_put(2)])
    await store.submit_await([_put(4)])
    assert [m.message_id for m in await store.load_messages("a")] == [1, 2, 3, 4]


async def test_a_cancelled_waiter_still_commits(store: SQLiteStore) -> None:
    async def step() -> None:
        await store.submit_await([_put(7)])

    task = asyncio.create_task(step())
    await asyncio.sleep(0)  # the task has submitted and is waiting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.flush()
    assert [m.message_id for m in await store.load_messages("a")] == [7]
