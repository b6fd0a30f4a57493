"""A burst of concurrent HTTP queue sends: each is committed exactly once, in id order.

Sends arriving in one event-loop tick share one SQLite commit (group commit); this
checks that sharing loses, duplicates and reorders nothing, and that a ``200``
answer means the message is on disk: the server is killed with SIGKILL right after
the burst and a new server on the same file still has every message.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.server.live import start_server

BURST = 200


async def _burst(url: str, path: str) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one(i: int) -> dict[str, Any]:
            resp = await http.post(path, json={"body": {"i": i}})
            assert resp.status_code == 200, resp.text
            out: dict[str, Any] = resp.json()
            return out

        return await asyncio.gather(*(one(i) for i in range(BURST)))


def _queued(url: str, key: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/actors/counter/{key}/inspector/queue", timeout=30)
    assert resp.status_code == 200, resp.text
    messages: list[dict[str, Any]] = resp.json()["messages"]
    return [m for m in messages if m["queue"] == "jobs"]


def test_concurrent_sends_are_committed_exactly_once_in_id_order(tmp_path: Path) -> None:
    db = tmp_path / "agentvm.db"
    live = start_server(db)
    try:
        answers = asyncio.run(_burst(live.url, "/actors/counter/burst/queues/jobs"))
    finally:
        # SIGKILL: nothing gets a chance to flush; a 200 must already be on disk.
        live.proc.send_signal(signal.SIGKILL)
        live.proc.wait(timeout=30)
    assert {a["status"] for a in answers} == {"queued"}
    ids = [a["message_id"] for a in answers]
    assert len(set(ids)) == BURST  # every send has its own id

    again = start_server(db)
    try:
        queued = _queued(again.url, "burst")
    finally:
        assert again.stop() == 0
    # Exactly the acknowledged messages, each once, delivered in id order.
    assert [m["message_id"] for m in queued] == sorted(ids)
    by_id = {a["message_id"]: i for i, a in enumerate(answers)}
    assert [m["body"]["i"] for m in queued] == [by_id[m["message_id"]] for m in queued]
    assert sorted(m["body"]["i"] for m in queued) == list(range(BURST))
