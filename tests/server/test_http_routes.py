"""Every route of the HTTP contract against a live server process."""

from __future__ import annotations

import base64
from urllib.parse import quote

import httpx

from orchestrator.keys import encode_key_path


def test_healthz_openapi_and_unknown_route(http: httpx.Client) -> None:
    health = http.get("/healthz").json()
    assert health["status"] == "ok"
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/actors",
        "/actors/{name}/{key}",
        "/actors/{name}/{key}/actions/{action}",
        "/actors/{name}/{key}/queues/{queue}",
        "/actors/{name}/{key}/state",
        "/actors/{name}/{key}/events",
        "/actors/{name}/{key}/inspector/workflow-history",
        "/actors/{name}/{key}/inspector/queue",
        "/actors/{name}/{key}/inspector/summary",
        "/vms/{key}/files/{path}",
        "/vms/{key}/ls/{path}",
        "/healthz",
        "/metrics",
    ):
        assert path in paths, path
    assert "422" not in str(paths["/actors/{name}/{key}/actions/{action}"]["post"]["responses"])
    assert "SendRequest" in spec["components"]["schemas"]
    missing = http.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "route_not_found"
    wrong_method = http.patch("/actors")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["group"] == "request"


def test_get_or_create_list_describe_destroy(http: httpx.Client, unique: str) -> None:
    first = http.post(f"/actors/counter/{unique}", json={"input": None}).json()
    assert first["created"] is True and first["key"] == [unique] and first["name"] == "counter"
    again = http.post(f"/actors/counter/{unique}").json()
    assert again == {**first, "created": False}
    taken = http.post(f"/actors/counter/{unique}", params={"if_exists": "error"})
    assert taken.status_code == 409
    assert taken.json()["error"]["code"] == "already_exists"
    listed = http.get("/actors", params={"name": "counter"}).json()["actors"]
    assert first["actor_id"] in {a["actor_id"] for a in listed}
    assert all(a["name"] == "counter" for a in listed)
    info = http.get(f"/actors/counter/{unique}").json()
    assert info["actor_id"] == first["actor_id"] and info["awake"] is True
    gone = http.delete(f"/actors/counter/{unique}")
    assert gone.json() == {"actor_id": first["actor_id"], "destroyed": True}
    assert http.get(f"/actors/counter/{unique}").status_code == 404
    assert http.delete(f"/actors/counter/{unique}").status_code == 404


def test_actions_and_state(http: httpx.Client, unique: str) -> None:
    base = f"/actors/counter/{unique}"
    assert http.post(f"{base}/actions/increment", json={"args": [5]}).json() == {"output": 5}
    assert http.post(f"{base}/actions/increment").json() == {"output": 6}
    assert http.post(f"{base}/actions/get_count", json={}).json() == {"output": 6}
    assert http.get(f"{base}/state").json() == {"state": {"count": 6}}
    # create=false refuses to make a new actor
    absent = http.post(
        f"/actors/counter/{unique}-absent/actions/get_count", params={"create": "false"}
    )
    assert absent.status_code == 404 and absent.json()["error"]["code"] == "not_found"


def test_queue_send_queued_completed_timed_out(http: httpx.Client, unique: str) -> None:
    base = f"/actors/worker/{unique}"
    queued = http.post(f"{base}/queues/parked", json={"body": {"n": 1}}).json()
    assert queued["status"] == "queued" and isinstance(queued["message_id"], int)
    done = http.post(
        f"{base}/queues/requests", json={"body": {"n": 21}, "wait": True, "timeout_ms": 30_000}
    ).json()
    assert done["status"] == "completed" and done["response"] == {"doubled": 42}
    timed_out = http.post(
        f"{base}/queues/parked", json={"body": {"n": 2}, "wait": True, "timeout_ms": 50}
    ).json()
    assert timed_out["status"] == "timed_out"
    # the timed-out message is still queued, and the inspector shows both parked ones
    messages = http.get(f"{base}/inspector/queue").json()["messages"]
    assert [m["body"] for m in messages if m["queue"] == "parked"] == [{"n": 1}, {"n": 2}]
    history = http.get(f"{base}/inspector/workflow-history").json()
    assert history["is_workflow"] is True and history["workflow_status"] == "running"
    steps = [e for e in history["entries"] if e["kind"] == "step"]
    assert steps and steps[0]["status"] == "completed" and steps[0]["output"] == 42
    summary = http.get(f"{base}/inspector/summary").json()
    assert summary["queue_pending"] == 2 and summary["is_workflow"] is True
    assert summary["entries_by_status"]["completed"] >= 1 and summary["awake"] is True


def test_inspector_routes_do_not_create(http: httpx.Client, unique: str) -> None:
    for suffix in ("state", "inspector/queue", "inspector/workflow-history", "inspector/summary"):
        resp = http.get(f"/actors/counter/{unique}/{suffix}")
        assert resp.status_code == 404, suffix
        assert resp.json()["error"] == {
            "group": "actor",
            "code": "not_found",
            "message": resp.json()["error"]["message"],
            "metadata": resp.json()["error"]["metadata"],
        }
    assert http.get(f"/actors/counter/{unique}").status_code == 404


def test_keys_with_commas_slashes_and_unicode(http: httpx.Client) -> None:
    keys = [
        ["a,b", "c/d"],
        ["ünïcødé ✓", "100%", "sp ace"],
        ["x?y#z", "&=+"],
        ["just-one"],
    ]
    for key in keys:
        path = f"/actors/counter/{encode_key_path(tuple(key))}"
        created = http.post(path).json()
        assert created["key"] == key, created
        http.post(f"{path}/actions/increment", json={"args": [3]})
        assert http.get(f"{path}/state").json() == {"state": {"count": 3}}
    listed = {
        tuple(a["key"]) for a in http.get("/actors", params={"name": "counter"}).json()["actors"]
    }
    for key in keys:
        assert tuple(key) in listed
    # ["a", "b"] (two parts) and ["a,b"] (one part) are different actors
    two = http.post("/actors/counter/a,b").json()
    one = http.post("/actors/counter/a%2Cb").json()
    assert two["key"] == ["a", "b"] and one["key"] == ["a,b"] and two["actor_id"] != one["actor_id"]


def test_bytes_round_trip(http: httpx.Client, unique: str) -> None:
    base = f"/actors/counter/{unique}"
    raw = bytes(range(256))
    wire = {"$bytes": base64.b64encode(raw).decode()}
    echoed = http.post(f"{base}/actions/echo", json={"args": [{"nested": [wire, "text"]}]}).json()
    assert echoed == {"output": {"nested": [wire, "text"]}}
    out = http.post(
        f"{base}/actions/concat",
        json={"args": [{"$bytes": base64.b64encode(b"ab").decode()}, {"$bytes": "Y2Q="}]},
    ).json()
    assert base64.b64decode(out["output"]["$bytes"]) == b"abcd"
    blob = http.post(f"{base}/actions/blob", json={"args": [1000]}).json()["output"]
    assert len(base64.b64decode(blob["$bytes"])) == 1000
    # an object with other keys beside $bytes is just an object
    plain = {"$bytes": "AA==", "other": 1}
    assert http.post(f"{base}/actions/echo", json={"args": [plain]}).json() == {"output": plain}


def test_vm_files_routes(http: httpx.Client, unique: str) -> None:
    key = encode_key_path((unique, "sandbox"))
    content = b"\x00\x01binary\xff" + "ünïcødé".encode()
    put = http.put(f"/vms/{key}/files/home/user/dir/data.bin", content=content)
    assert put.json() == {"path": "/home/user/dir/data.bin", "size": len(content)}
    http.put(f"/vms/{key}/files/home/user/notes%20one.txt", content=b"hello")
    got = http.get(f"/vms/{key}/files/home/user/dir/data.bin")
    assert got.status_code == 200 and got.content == content
    assert got.headers["content-type"] == "application/octet-stream"
    assert http.get(f"/vms/{key}/files/home/user/notes%20one.txt").content == b"hello"
    listing = http.get(f"/vms/{key}/ls/home/user").json()
    assert listing["path"] == "/home/user"
    assert {e["name"]: e["type"] for e in listing["entries"]} == {
        "dir": "dir",
        "notes one.txt": "file",
    }
    missing = http.get(f"/vms/{key}/files/home/user/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "file_not_found"
    assert http.get(f"/vms/{unique}-none/files/x").status_code == 404
    # the same files through the vm's actions (bytes as $bytes)
    read = http.post(
        f"/actors/vm/{key}/actions/read_file", json={"args": ["/home/user/dir/data.bin"]}
    ).json()
    assert base64.b64decode(read["output"]["$bytes"]) == content


def test_metrics(http: httpx.Client, unique: str) -> None:
    http.post(f"/actors/worker/{unique}/queues/requests", json={"body": {"n": 1}, "wait": True})
    http.post(f"/actors/counter/{unique}/actions/increment", json={"args": [1]})
    text = http.get("/metrics").text
    assert 'agentvm_actors_awake{actor="counter"}' in text
    assert 'agentvm_queue_depth{actor="worker",state="pending"}' in text
    assert 'agentvm_step_seconds_count{actor="worker",outcome="completed"}' in text
    assert 'agentvm_action_seconds_bucket{action="increment",actor="counter",le="+Inf"}' in text
    assert (
        'agentvm_http_request_seconds_count{method="POST",'
        'route="/actors/{name}/{key}/actions/{action}",status="200"}'
    ) in text
    assert "# TYPE agentvm_step_seconds histogram" in text


def test_percent_encoded_file_path_round_trip(http: httpx.Client, unique: str) -> None:
    name = "we?ird #name%.txt"
    url = f"/vms/{unique}/files/tmp/{quote(name)}"
    http.put(url, content=b"x")
    assert http.get(url).content == b"x"
    entries = http.get(f"/vms/{unique}/ls/tmp").json()["entries"]
    assert [e["name"] for e in entries] == [name]
