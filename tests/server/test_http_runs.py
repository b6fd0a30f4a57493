"""Runs over HTTP against a live server subprocess (``runner`` in tests/server/registry.py)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from orchestrator.errors import RunFailed
from orchestrator.remote import create_client
from tests.server.live import LiveServer


def _poll(http: httpx.Client, path: str, pred: Any, *, timeout: float = 30.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = http.get(path)
        # A send from another thread may not have created the actor yet: 404 until then.
        assert r.status_code in (200, 404), r.text
        data = r.json()
        if r.status_code == 200 and pred(data):
            return data
        assert time.monotonic() < deadline, f"{path}: last {data}"
        time.sleep(0.02)


def _send(http: httpx.Client, key: str, queue: str, body: Any, **kw: Any) -> dict[str, Any]:
    r = http.post(f"/actors/runner/{key}/queues/{queue}", json={"body": body, **kw})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _action(http: httpx.Client, key: str, action: str) -> None:
    r = http.post(f"/actors/runner/{key}/actions/{action}", json={"args": []})
    assert r.status_code == 200, r.text


def test_a_failed_run_answers_failed_and_the_next_completes(http: httpx.Client, unique: str):
    _action(http, unique, "break_work")
    bad = _send(http, unique, "jobs", {"label": "bad"}, wait=True)
    assert bad["status"] == "failed" and isinstance(bad["message_id"], int)
    err = bad["error"]
    assert (err["group"], err["code"]) == ("workflow", "step_exhausted")
    assert "work is broken" in err["message"] and isinstance(err["metadata"], dict)
    assert "response" not in bad
    _action(http, unique, "heal")
    ok = _send(http, unique, "jobs", {"label": "ok"}, wait=True)
    assert ok["status"] == "completed"
    assert ok["response"]["result"] == "done ok"

    runs = http.get(f"/actors/runner/{unique}/runs").json()["runs"]
    assert [(r["run_id"], r["status"]) for r in runs] == [
        (ok["message_id"], "completed"),
        (bad["message_id"], "failed"),
    ]
    assert runs[1]["error"]["code"] == "step_exhausted" and runs[1]["meta"] == {"label": "bad"}
    failed = http.get(f"/actors/runner/{unique}/runs", params={"status": "failed"}).json()
    assert [r["run_id"] for r in failed["runs"]] == [bad["message_id"]]
    across = http.get("/runs", params={"status": "failed", "name": "runner"}).json()["runs"]
    assert bad["message_id"] in [r["run_id"] for r in across]
    assert all(r["status"] == "failed" and r["name"] == "runner" for r in across)

    detail = http.get(f"/actors/runner/{unique}/runs/{bad['message_id']}").json()
    assert detail["input"] == {"label": "bad"} and detail["result"] is None
    assert [(e["path"], e["status"]) for e in detail["history"]] == [
        ("prepare", "completed"),
        ("work", "failed"),
    ]


def test_retry_runs_again_from_the_failed_step(http: httpx.Client, unique: str):
    _action(http, unique, "break_work")
    bad = _send(http, unique, "jobs", {"label": "r"}, wait=True)
    assert bad["status"] == "failed"
    rid = bad["message_id"]
    _action(http, unique, "heal")
    r = http.post(f"/actors/runner/{unique}/runs/{rid}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("queued", "running") and r.json()["error"] is None
    done = _poll(http, f"/actors/runner/{unique}/runs/{rid}", lambda d: d["status"] == "completed")
    assert done["result"] == {"result": "done r", "prepared": 1}
    assert [(e["path"], e["status"], e["attempts"]) for e in done["history"]] == [
        ("prepare", "completed", 1),
        ("work", "completed", 1),
    ]
    # the completed step was not run again
    assert http.get(f"/actors/runner/{unique}/state").json()["state"]["prepared"] == 1
    again = http.post(f"/actors/runner/{unique}/runs/{rid}/retry")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_retryable"


def test_cancel_a_running_run_answers_the_waiting_sender(
    http: httpx.Client, server: LiveServer, unique: str
):
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=60) as other:
        waiting = pool.submit(
            _send, other, unique, "slow", {"seconds": 600}, wait=True, timeout_ms=120_000
        )
        runs = _poll(
            http,
            f"/actors/runner/{unique}/runs",
            lambda d: [r["status"] for r in d["runs"]] == ["running"],
        )["runs"]
        rid = runs[0]["run_id"]
        _poll(
            http,
            f"/actors/runner/{unique}/runs/{rid}",
            lambda d: [(e["path"], e["status"]) for e in d["history"]] == [("nap", "running")],
        )
        r = http.post(f"/actors/runner/{unique}/runs/{rid}/cancel")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
        assert waiting.result(timeout=30) == {"status": "cancelled", "message_id": rid}
    r = http.post(f"/actors/runner/{unique}/runs/{rid}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_cancellable"
    # the queue serves the next one
    assert _send(http, unique, "slow", {"seconds": 0}, wait=True)["status"] == "completed"


def test_runs_of_one_key_overlap_up_to_the_limit(http: httpx.Client, unique: str):
    ids = [_send(http, unique, "jobs", {"label": i, "hold": 0.5})["message_id"] for i in range(3)]
    works = []
    for rid in ids:
        d = _poll(http, f"/actors/runner/{unique}/runs/{rid}", lambda d: d["status"] == "completed")
        works.append(next(e for e in d["history"] if e["path"] == "work"))
    first, second, third = works
    # concurrency 2: the first two overlap, the third waited for a free slot
    assert (
        second["started_at"] < first["finished_at"] and first["started_at"] < second["finished_at"]
    )
    assert third["started_at"] >= min(first["finished_at"], second["finished_at"])


def test_caller_mistakes_are_4xx(http: httpx.Client, unique: str):
    _send(http, unique, "jobs", {"label": "x"}, wait=True)
    r = http.get(f"/actors/runner/{unique}/runs/999999999")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert r.json()["error"]["group"] == "run"
    r = http.get(f"/actors/runner/{unique}/runs/abc")
    assert r.status_code == 400
    r = http.get(f"/actors/runner/{unique}/runs", params={"status": "stuck"})
    assert r.status_code == 400
    r = http.get(f"/actors/runner/{unique}/runs", params={"statsu": "failed"})
    assert r.status_code == 400
    r = http.get(f"/actors/runner/nobody-{unique}/runs")
    assert r.status_code == 404
    r = http.post(f"/actors/runner/{unique}/workflow/recover")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_recoverable"
    r = http.post(f"/actors/runner/{unique}/workflow/cancel")
    assert r.status_code == 409
    r = http.get("/actors", params={"workflow_status": "failed"})
    assert r.status_code == 200 and isinstance(r.json()["actors"], list)
    assert http.get("/actors", params={"workflow_status": "odd"}).status_code == 400
    # a browser-shaped body is still refused on the new POST routes
    r = http.post(
        f"/actors/runner/{unique}/runs/1/cancel",
        content=b"x",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 415


def test_python_client_failed_status_and_raise(server: LiveServer, unique: str):
    async def go() -> None:
        async with create_client(server.url) as client:
            h = client.runner.get_or_create(unique)
            await h.break_work()
            res = await h.send("jobs", {"label": "c"}, wait=True, timeout=30)
            assert res.status == "failed" and res.error is not None
            assert res.error["code"] == "step_exhausted"
            with pytest.raises(RunFailed) as info:
                await h.send("jobs", {"label": "d"}, wait=True, timeout=30, raise_on_failure=True)
            assert info.value.metadata["error"]["code"] == "step_exhausted"
            await h.heal()
            runs = await h.runs("failed")
            assert len(runs) == 2
            await h.retry_run(res.message_id)
            for _ in range(1500):
                detail = await h.run(res.message_id)
                if detail.status == "completed":
                    break
                await asyncio.sleep(0.02)
            assert detail.status == "completed" and detail.result["result"] == "done c"
            assert [r.run_id for r in await client.list_runs(status="failed", name="runner")]

    asyncio.run(go())
