"""The ``/workflows`` routes against a live real host (no agent runs): register,
versions, list, get; 404s and 400s naming the field; params checked at submit time;
a run whose steps are all skipped (no vm needed) over HTTP, SSE, the Python client
and the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import Engine, InvalidRequest, create_client, setup
from orchestrator.builtin import workflows
from tests.server.live import LiveServer, agentvm, start_server
from tests.support.docker import docker_client, remove_host

pytestmark = pytest.mark.docker


def _definition(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": "fix then review",
        "params": [
            {"name": "repo", "type": "string", "required": True},
            {"name": "n", "type": "number", "default": 1},
        ],
        "steps": [
            {"id": "fix", "prompt": "fix {{ params.repo }}"},
            {"id": "review", "prompt": "review {{steps.fix.text}}", "depends_on": ["fix"]},
        ],
        **extra,
    }


# Runs without an agent: every step's condition is false, so each is skipped and
# no vm is ever made.
SKIPPED: dict[str, Any] = {
    "name": "all-skipped",
    "params": [{"name": "go", "type": "boolean", "default": False}],
    "steps": [
        {"id": "a", "prompt": "a", "when": {"param": "go"}},
        {"id": "b", "prompt": "b {{steps.a.text}}", "depends_on": ["a"], "when": {"param": "go"}},
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real host (vm actor, built-ins, the workflows actor) for the module."""
    host_id = f"wfhttp-{uuid.uuid4().hex[:8]}"
    db = tmp_path_factory.mktemp("wf") / "agentvm.db"
    live = start_server(
        db, env={"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}, registry=None
    )
    yield live
    live.stop()
    client = docker_client()
    remove_host(client, host_id)
    client.close()


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}"


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    return err


def test_put_get_versions_and_ls(http: httpx.Client, name: str) -> None:
    v1 = _definition(name)
    resp = http.put(f"/workflows/{name}", json=v1)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"name": name, "version": 1, "created": True}
    # The same definition again: unchanged.
    assert http.put(f"/workflows/{name}", json=v1).json() == {
        "name": name,
        "version": 1,
        "created": False,
    }
    v2 = _definition(name, description="fix, review and more")
    assert http.put(f"/workflows/{name}", json=v2).json()["version"] == 2

    latest = http.get(f"/workflows/{name}").json()
    assert latest["version"] == 2 and latest["description"] == "fix, review and more"
    first = http.get(f"/workflows/{name}", params={"version": 1}).json()
    assert first["version"] == 1 and first["description"] == "fix then review"
    versions = http.get(f"/workflows/{name}/versions").json()
    assert sorted(v["version"] for v in versions) == [1, 2]

    listed = {w["name"]: w for w in http.get("/workflows").json()}
    assert listed[name]["latest"] == 2
    assert [p["name"] for p in listed[name]["params"]] == ["repo", "n"]
    spec = http.get("/openapi.json").json()["paths"]
    assert {"/workflows", "/workflows/{name}", "/workflows/{name}/runs"} <= set(spec)


def test_not_found_and_bad_requests(http: httpx.Client, name: str) -> None:
    assert _error(http.get(f"/workflows/{name}"), 404)["code"] == "not_found"
    assert _error(http.get(f"/workflows/{name}/runs/1"), 404)["group"] == "workflow"
    assert _error(http.post(f"/workflows/{name}/runs", json={}), 404)["code"] == "not_found"
    http.put(f"/workflows/{name}", json=_definition(name)).raise_for_status()
    assert _error(http.get(f"/workflows/{name}", params={"version": 9}), 404)["code"] == (
        "not_found"
    )
    assert _error(http.get(f"/workflows/{name}/runs/999999"), 404)["group"] == "run"

    # The path names the workflow: a body naming another is refused.
    err = _error(http.put(f"/workflows/{name}", json=_definition("other")), 400)
    assert err["metadata"]["field"] == "name"
    err = _error(http.put("/workflows/no.dots", json=_definition("no.dots")), 400)
    assert err["metadata"]["field"] == "path.name"
    broken = _definition(name, steps=[{"id": "a", "prompt": "x", "depends_on": ["zz"]}])
    err = _error(http.put(f"/workflows/{name}", json=broken), 400)
    assert err["metadata"]["field"] == "steps.0.depends_on.0"
    err = _error(http.put(f"/workflows/{name}", content=b"[1]", headers=_JSON), 400)
    assert err["metadata"]["field"] == "body"
    err = _error(http.post(f"/workflows/{name}/runs", json={"paramz": {}}), 400)
    assert err["metadata"]["field"] == "body.paramz"
    err = _error(http.post(f"/workflows/{name}/runs", json={"keep_vm": "sometimes"}), 400)
    assert err["metadata"]["field"] == "body.keep_vm"


_JSON = {"content-type": "application/json"}


def test_a_browser_on_another_site_cannot_register_or_start_runs(
    http: httpx.Client, name: str
) -> None:
    """A page elsewhere can make the operator's browser send requests to the local
    host: a form post (text/plain, no preflight) or a fetch with its Origin. Neither
    registers a definition nor starts a run."""
    body = json.dumps(_definition(name))
    plain = {"content-type": "text/plain"}
    assert http.put(f"/workflows/{name}", content=body, headers=plain).status_code == 415
    evil = {**_JSON, "origin": "https://evil.example"}
    assert http.put(f"/workflows/{name}", content=body, headers=evil).status_code == 403
    run = json.dumps({"definition": SKIPPED})
    assert http.post("/workflows/runs", content=run, headers=plain).status_code == 415
    assert http.post("/workflows/runs", content=run, headers=evil).status_code == 403
    assert _error(http.get(f"/workflows/{name}"), 404)["code"] == "not_found"
    assert name not in [w["name"] for w in http.get("/workflows").json()]


def test_params_are_checked_at_submit_time(http: httpx.Client, name: str) -> None:
    http.put(f"/workflows/{name}", json=_definition(name)).raise_for_status()
    cases = [
        ({}, "params.repo"),  # required, missing
        ({"repo": "r", "n": "three"}, "params.n"),  # wrong type
        ({"repo": "r", "token": "x"}, "params.token"),  # not declared
    ]
    for params, field in cases:
        err = _error(http.post(f"/workflows/{name}/runs", json={"params": params}), 400)
        assert err["metadata"]["field"] == field, err
    # Nothing was started by the refused requests.
    assert http.get(f"/workflows/{name}/runs").json() == {"runs": []}

    # Inline: the definition's own problems are named under "definition.".
    bad = _definition(name, steps=[{"id": "a", "prompt": "{{steps.b.text}}"}])
    err = _error(http.post("/workflows/runs", json={"definition": bad}), 400)
    assert err["metadata"]["field"] == "definition.steps.0.prompt", err
    err = _error(http.post("/workflows/runs", json={"definition": _definition(name)}), 400)
    assert err["metadata"]["field"] == "params.repo"
    err = _error(http.post("/workflows/runs", json={"params": {}}), 400)
    assert err["metadata"]["field"] == "body.definition"


def _sse_events(url: str, path: str) -> list[tuple[str, Any]]:
    """Every event of an SSE stream that ends by itself."""
    events: list[tuple[str, Any]] = []
    with httpx.Client(base_url=url, timeout=60) as client, client.stream("GET", path) as resp:
        assert resp.status_code == 200
        name, data = "message", []
        for line in resp.iter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    events.append((name, json.loads("\n".join(data))))
                name, data = "message", []
            elif line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].strip())
    return events


def test_a_run_over_http_sse_and_the_python_client(server: LiveServer, http: httpx.Client) -> None:
    http.put("/workflows/all-skipped", json=SKIPPED).raise_for_status()
    resp = http.post("/workflows/all-skipped/runs", json={"wait": True, "timeout_ms": 60_000})
    assert resp.status_code == 200, resp.text
    view = resp.json()
    assert view["status"] == "completed" and view["workflow"] == "all-skipped"
    assert view["order"] == ["a", "b"]
    assert {s: view["steps"][s]["status"] for s in ("a", "b")} == {"a": "skipped", "b": "skipped"}
    assert view["params"] == {"go": False}
    rid = view["run_id"]
    assert http.get(f"/workflows/all-skipped/runs/{rid}").json()["status"] == "completed"
    listed = http.get("/workflows/all-skipped/runs").json()["runs"]
    assert listed[0]["run_id"] == rid and listed[0]["status"] == "completed"
    # A finished run cannot be cancelled; its event stream ends at once.
    err = _error(http.post(f"/workflows/all-skipped/runs/{rid}/cancel"), 409)
    assert err["code"] == "not_cancellable"
    assert _sse_events(server.url, f"/workflows/all-skipped/runs/{rid}/events") == []

    # Not waiting: 202, then the run's own events, ending with the run.
    started = http.post("/workflows/all-skipped/runs", json={})
    assert started.status_code in (200, 202), started.text
    events = _sse_events(
        server.url, f"/workflows/all-skipped/runs/{started.json()['run_id']}/events"
    )
    names = [n for n, _ in events]
    if names:  # (empty: the run ended before the stream began)
        assert names[-1] == "run_completed", names
        assert all(p.get("run_id") == started.json()["run_id"] for _, p in events)

    # Inline over the Python client (HTTP transport): run, get, put.
    async def go() -> None:
        async with create_client(server.url) as client:
            inline = {**SKIPPED, "name": "inline-skipped"}
            done = await client.workflows.run(inline, {"go": False}, timeout=60)
            assert done["status"] == "completed", done
            again = await client.workflows.get("inline-skipped", done["run_id"])
            assert again["run_id"] == done["run_id"] and again["status"] == "completed"
            put = await client.workflows.put(SKIPPED)
            assert put == {"name": "all-skipped", "version": 1, "created": False}
            by_name = await client.workflows.run("all-skipped", timeout=60)
            assert by_name["version"] == 1 and by_name["status"] == "completed"
            with pytest.raises(InvalidRequest) as bad:
                await client.workflows.run("all-skipped", {"go": "yes"})
            assert bad.value.metadata["field"] == "params.go"

    asyncio.run(go())


def test_cli_put_ls_show_run(server: LiveServer, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    file = tmp_path / "wf.json"
    file.write_text(json.dumps({**SKIPPED, "name": name}))
    url = ("--url", server.url)
    res = agentvm("workflow", "put", str(file), *url)
    assert res.returncode == 0, res.stderr
    assert f"{name}: registered v1".encode() in res.stdout
    res = agentvm("workflow", "put", str(file), *url, "--json")
    assert json.loads(res.stdout) == {"name": name, "version": 1, "created": False}

    res = agentvm("workflow", "ls", *url, "--json")
    assert res.returncode == 0, res.stderr
    assert name in [w["name"] for w in json.loads(res.stdout)]
    res = agentvm("workflow", "ls", *url)
    assert name.encode() in res.stdout

    res = agentvm("workflow", "run", name, "-p", "go=false", *url, "--json")
    assert res.returncode == 0, res.stderr
    view = json.loads(res.stdout)
    assert view["status"] == "completed" and view["params"] == {"go": False}
    res = agentvm("workflow", "run", str(file), "--watch", *url)  # inline, live tree
    assert res.returncode == 0, res.stderr
    assert b"skipped" in res.stdout and name.encode() in res.stdout

    res = agentvm("workflow", "show", name, str(view["run_id"]), *url)
    assert res.returncode == 0, res.stderr
    assert b"a skipped" in res.stdout.replace(b"- ", b"")
    res = agentvm("workflow", "show", name, *url)
    assert res.returncode == 0 and b"2 steps" in res.stdout

    res = agentvm("workflow", "run", name, "-p", "go=3", *url)
    assert res.returncode == 1 and b"params.go" in res.stderr
    res = agentvm("workflow", "show", "nope-" + name, *url)
    assert res.returncode == 1 and b"workflow/not_found" in res.stderr


async def test_the_python_client_in_process(tmp_path: Path) -> None:
    """``client.workflows`` over the in-process transport: the same calls."""
    async with Engine(setup(use={"workflows": workflows()}), db=tmp_path / "e.db") as engine:
        client = engine.client()
        assert (await client.workflows.put(SKIPPED))["created"] is True
        view = await client.workflows.run("all-skipped", {"go": False}, timeout=60)
        assert view["status"] == "completed" and view["version"] == 1
        assert view["steps"]["b"]["reason"] == "condition"
        assert (await client.workflows.get("all-skipped", view["run_id"]))["order"] == ["a", "b"]
        queued = await client.workflows.run(json.dumps(SKIPPED), wait=False)
        assert queued["status"] in ("queued", "running", "completed")
        with pytest.raises(InvalidRequest) as bad:
            await client.workflows.run({**SKIPPED, "steps": []})
        assert bad.value.metadata["field"] == "steps"
