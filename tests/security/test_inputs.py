"""Action inputs a caller can make the host hold or act on: deeply nested JSON and
vm ``limits`` beyond what the machine has. Played against real servers in
subprocesses (the test registry for JSON, the real host with Docker for limits)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import docker
import httpx
import pytest

from host.sandbox.backend import LABEL_HOST
from host.sandbox.models import MAX_CPUS, MAX_MEMORY_MB, MAX_PIDS, SandboxLimits
from host.server.guard import json_depth
from tests.server.live import LiveServer, start_server
from tests.support.docker import docker_client, remove_host


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    live = start_server(tmp_path_factory.mktemp("inputs") / "agentvm.db")
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client
    assert live.stop() == 0


def _nested(depth: int) -> bytes:
    return b'{"args": [' + b"[" * (depth - 2) + b"1" + b"]" * (depth - 2) + b"]}"


def test_deeply_nested_json_is_a_400(http: httpx.Client) -> None:
    """A body nested 900 deep used to be a 500 (recursion deep inside the server)."""
    for depth in (65, 900, 100_000):
        resp = http.post(
            "/actors/counter/deep/actions/echo",
            content=_nested(depth),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status_code == 400, (depth, resp.text[:300])
        error = resp.json()["error"]
        assert (error["group"], error["code"]) == ("request", "invalid_json")
        assert error["metadata"]["field"] == "body"
        assert error["metadata"]["depth"] == depth and error["metadata"]["max_depth"] == 64
    # Also in a queue send and a create input; nothing was created.
    deep = {"body": json.loads(_nested(200))}
    resp = http.post("/actors/counter/deep/queues/jobs", content=json.dumps(deep).encode())
    assert resp.status_code == 415  # no Content-Type: not even looked at
    resp = http.post("/actors/counter/deep2/queues/jobs", json=deep)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    resp = http.post("/actors/vm/deep", json={"input": {"limits": json.loads(_nested(100))}})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    keys = [a["key"] for a in http.get("/actors").json()["actors"]]
    assert not any(k[0].startswith("deep") for k in keys), keys


def test_depth_limit_itself_and_brackets_in_strings_pass(http: httpx.Client) -> None:
    resp = http.post(
        "/actors/counter/deep-ok/actions/echo",
        content=_nested(64),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    text = "[{" * 5000 + '\\"' + "}]" * 5000
    resp = http.post("/actors/counter/deep-ok/actions/echo", json={"args": [text]})
    assert resp.status_code == 200 and resp.json()["output"] == text


def test_json_depth_counts_only_structure() -> None:
    assert json_depth(b"1") == 0
    assert json_depth(b'{"a": [1, {"b": "[[[["}]}') == 3
    assert json_depth(b'["\\"]]]]", [[]]]') == 3
    assert json_depth(b"[" * 1_000_000) == 1_000_000


# --- vm limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    host_id = f"inputs-{uuid.uuid4().hex[:8]}"
    env = {"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}
    db = tmp_path_factory.mktemp("inputs-host") / "host.db"
    live = start_server(db, env=env, registry=None, deadline_s=120)
    yield live, host_id
    live.stop()
    client = docker_client()
    try:
        remove_host(client, host_id)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_mb", MAX_MEMORY_MB + 1),
        ("memory_mb", 10**12),
        ("cpus", MAX_CPUS + 1),
        ("pids", MAX_PIDS + 1),
        ("pids", 2**62),
        ("tmp_mb", MAX_MEMORY_MB + 1),
    ],
)
def test_vm_limits_beyond_the_host_are_a_400(
    host: tuple[LiveServer, str], field: str, value: float
) -> None:
    """A caller asking for more than the machine has would lift the sandbox's cgroup
    limits (or make Docker fail with a 500): refused before any container exists."""
    live, host_id = host
    key = f"big-{field}-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=live.url, timeout=60) as http:
        resp = http.post(f"/actors/vm/{key}", json={"input": {"limits": {field: value}}})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["metadata"]["field"] == f"limits.{field}", error
        assert "less than or equal" in error["message"]
        keys = [a["key"] for a in http.get("/actors", params={"name": "vm"}).json()["actors"]]
        assert [key] not in keys
    client = docker_client()
    try:
        label = {"label": f"{LABEL_HOST}={host_id}"}
        assert client.containers.list(all=True, filters=label) == []
    except docker.errors.DockerException as exc:  # pragma: no cover - engine trouble
        pytest.fail(f"docker: {exc}")
    finally:
        client.close()


def test_limits_up_to_the_host_are_accepted() -> None:
    limits = SandboxLimits(memory_mb=MAX_MEMORY_MB, cpus=MAX_CPUS, pids=MAX_PIDS, tmp_mb=64)
    assert limits.cpus == MAX_CPUS
