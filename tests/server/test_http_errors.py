"""Caller mistakes get a 4xx in the error shape, naming the problem — never a 5xx."""

from __future__ import annotations

import httpx
import pytest


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"group", "code", "message", "metadata"}
    return err


def test_unknown_actor_type(http: httpx.Client) -> None:
    err = _error(http.post("/actors/nosuch/k/actions/x"), 404)
    assert (err["group"], err["code"]) == ("actor", "unknown_type")
    assert "nosuch" in err["message"] and "counter" in err["metadata"]["known"]
    _error(http.post("/actors/nosuch/k"), 404)
    _error(http.get("/actors/nosuch/k/events"), 404)


def test_unknown_action_does_not_create_the_actor(http: httpx.Client, unique: str) -> None:
    err = _error(http.post(f"/actors/counter/{unique}/actions/frobnicate"), 404)
    assert (err["group"], err["code"]) == ("action", "not_found")
    assert "frobnicate" in err["message"] and "increment" in err["metadata"]["available"]
    assert http.get(f"/actors/counter/{unique}").status_code == 404


def test_unknown_queue(http: httpx.Client, unique: str) -> None:
    err = _error(http.post(f"/actors/counter/{unique}/queues/nope", json={"body": 1}), 404)
    assert (err["group"], err["code"]) == ("queue", "not_found")
    assert "nope" in err["message"] and err["metadata"]["declared"] == ["jobs", "slow"]


@pytest.mark.parametrize("key", ["%ZZ", "a,%2", "%FF%FE", "ok,%zz"])
def test_malformed_key(http: httpx.Client, key: str) -> None:
    err = _error(http.post(f"/actors/counter/{key}/actions/get_count"), 400)
    assert err["metadata"]["field"] == "key" and "malformed" in err["message"]


def test_oversized_bodies(http: httpx.Client, unique: str) -> None:
    big = "x" * (1024 * 1024 + 10)
    err = _error(http.post(f"/actors/counter/{unique}/actions/echo", json={"args": [big]}), 413)
    assert err["code"] == "body_too_large" and err["metadata"]["limit"] == 1024 * 1024

    def chunks():
        for _ in range(20):
            yield b"x" * 65536

    # streamed (chunked, no Content-Length): counted as it arrives
    err = _error(
        http.post(
            f"/actors/counter/{unique}/actions/echo",
            content=chunks(),
            headers={"content-type": "application/json"},
        ),
        413,
    )
    assert err["code"] == "body_too_large"
    # a message over the engine's message size limit is the engine's 413
    err = _error(
        http.post(f"/actors/counter/{unique}/queues/jobs", json={"body": "y" * 70_000}), 413
    )
    assert (err["group"], err["code"]) == ("queue", "message_too_large")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"args": "notalist"}, "body.args"),
        ({"args": [], "extra": 1}, "body.extra"),
        ({"args": [{"$bytes": 5}]}, "args[0]"),
        ({"args": [{"$bytes": "***"}]}, "args[0]"),
    ],
)
def test_wrong_types_in_action_body(http: httpx.Client, unique: str, body, field) -> None:
    err = _error(http.post(f"/actors/counter/{unique}/actions/echo", json=body), 400)
    assert err["metadata"]["field"] == field, err


def test_wrong_argument_count_and_type(http: httpx.Client, unique: str) -> None:
    err = _error(
        http.post(f"/actors/counter/{unique}/actions/increment", json={"args": [1, 2, 3]}), 400
    )
    assert err["metadata"]["field"] == "args" and "amount" in err["message"]
    err = _error(
        http.post(f"/actors/counter/{unique}/actions/increment", json={"args": ["many"]}), 400
    )
    assert err["metadata"]["field"] == "args[0]" and err["metadata"]["parameter"] == "amount"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": 1, "wait": "perhaps"}, "body.wait"),
        ({"body": 1, "timeout_ms": -5}, "body.timeout_ms"),
        ({"body": 1, "timeout_ms": 10**30}, "body.timeout_ms"),
        ({"body": 1, "timeout_ms": "soon"}, "body.timeout_ms"),
    ],
)
def test_wrong_types_in_send_body(http: httpx.Client, unique: str, body, field) -> None:
    err = _error(http.post(f"/actors/counter/{unique}/queues/jobs", json=body), 400)
    assert err["metadata"]["field"] == field
    assert field.split(".")[-1] in err["message"]


def test_malformed_json(http: httpx.Client, unique: str) -> None:
    err = _error(
        http.post(
            f"/actors/counter/{unique}/actions/echo",
            content=b'{"args": [1,',
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert err["group"] == "request" and "JSON" in err["message"]


def test_query_parameter_types(http: httpx.Client, unique: str) -> None:
    err = _error(
        http.post(f"/actors/counter/{unique}/actions/get_count", params={"create": "maybe"}), 400
    )
    assert err["metadata"]["field"] == "query.create"
    err = _error(http.post(f"/actors/counter/{unique}", params={"if_exists": "explode"}), 400)
    assert err["metadata"]["field"] == "query.if_exists"


def test_unknown_query_parameter(http: httpx.Client, unique: str) -> None:
    err = _error(
        http.post(f"/actors/counter/{unique}/queues/jobs", params={"wiat": "true"}, json={}), 400
    )
    assert err["metadata"]["field"] == "query.wiat" and "create" in err["message"]
