"""A plain queue send takes the fast path (host/server/fastpath.py); the same request
with a query parameter goes through the router. Both must answer alike, and the
outer middleware (browser guard, body limit, metrics) still applies to the fast one."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

# (path under /actors, JSON body): each sent both ways.
CASES: list[tuple[str, Any]] = [
    ("counter/{u}/queues/jobs", {"body": {"x": 1}}),
    ("counter/{u}/queues/jobs", {}),
    ("counter/{u}/queues/jobs", {"body": {"$bytes": "aGk="}}),
    ("counter/{u}/queues/jobs", {"body": {"$bytes": "not base64!"}}),
    ("counter/{u}/queues/nope", {"body": 1}),
    ("nosuch/{u}/queues/jobs", {"body": 1}),
    ("counter/%ZZ/queues/jobs", {"body": 1}),
    ("counter/{u}/queues/bad%2", {"body": 1}),
    ("counter/{u}/queues/jobs", {"body": 1, "extra": True}),
    ("counter/{u}/queues/jobs", [1]),
]


def _shape(resp: httpx.Response) -> tuple[int, Any]:
    data = resp.json()
    if resp.status_code == 200:
        return 200, (sorted(data), data["status"])  # message ids differ
    return resp.status_code, data


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p}:{b}" for p, b in CASES])
def test_fast_and_routed_sends_answer_alike(
    http: httpx.Client, unique: str, path: str, body: Any
) -> None:
    url = "/actors/" + path.format(u=unique)
    fast = http.post(url, json=body)
    routed = http.post(url + "?create=true", json=body)
    assert _shape(fast) == _shape(routed), (fast.text, routed.text)
    assert fast.status_code < 500


def test_fast_sends_are_queued_in_order_and_timed_under_the_route(
    http: httpx.Client, unique: str
) -> None:
    base = f"/actors/counter/{unique}"
    ids = [http.post(f"{base}/queues/jobs", json={"body": {"n": i}}).json() for i in range(5)]
    assert [r["status"] for r in ids] == ["queued"] * 5
    assert [r["message_id"] for r in ids] == sorted(r["message_id"] for r in ids)
    messages = http.get(f"{base}/inspector/queue").json()["messages"]
    assert [m["body"] for m in messages] == [{"n": i} for i in range(5)]
    metrics = http.get("/metrics").text
    assert 'route="/actors/{name}/{key}/queues/{queue}",status="200"' in metrics


def test_a_cross_site_browser_send_is_refused_before_the_fast_path(
    http: httpx.Client, unique: str
) -> None:
    base = f"/actors/counter/{unique}"
    evil = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    resp = http.post(f"{base}/queues/jobs", json={"body": "pwned"}, headers=evil)
    assert resp.status_code == 403
    # Nothing was queued (the actor was not even created).
    assert http.get(base).status_code == 404
