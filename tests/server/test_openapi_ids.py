"""Every route has a short, stable, unique ``operationId`` (generated clients name
their methods after them: ``call_action``, ``list_runs``, not
``call_action_actors__name___key__actions__action__post``)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from host.server.app import create_app
from orchestrator import Engine, Registry

OPERATION_ID = re.compile(r"^[a-z][a-z0-9_]*$")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

# Clients (clients/typescript, the console) call these by name: renaming one is a
# breaking change of the API.
WELL_KNOWN = {
    ("get", "/actors"): "list_actors",
    ("post", "/actors/{name}/{key}"): "get_or_create",
    ("get", "/actors/{name}/{key}"): "get_actor",
    ("delete", "/actors/{name}/{key}"): "destroy_actor",
    ("post", "/actors/{name}/{key}/actions/{action}"): "call_action",
    ("post", "/actors/{name}/{key}/queues/{queue}"): "send",
    ("get", "/actors/{name}/{key}/state"): "get_state",
    ("get", "/actors/{name}/{key}/events"): "events",
    ("get", "/actors/{name}/{key}/inspector/queue"): "queue_contents",
    ("get", "/actors/{name}/{key}/inspector/summary"): "inspector_summary",
    ("get", "/runs"): "list_runs",
    ("get", "/actors/{name}/{key}/runs"): "list_actor_runs",
    ("get", "/actors/{name}/{key}/runs/{run_id}"): "get_run",
    ("post", "/actors/{name}/{key}/runs/{run_id}/cancel"): "cancel_run",
    ("post", "/actors/{name}/{key}/runs/{run_id}/retry"): "retry_run",
    ("get", "/vms/{key}/files/{path}"): "download_file",
    ("put", "/vms/{key}/files/{path}"): "upload_file",
    ("get", "/healthz"): "healthz",
    ("post", "/workflows/validate"): "validate_workflow",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(Engine(Registry({})), token="").openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_every_operation_has_a_short_unique_id(spec: dict[str, Any]) -> None:
    ops = _operations(spec)
    assert len(ops) >= len(WELL_KNOWN)
    ids = [op.get("operationId") for _, _, op in ops]
    bad = [
        (m, p, op.get("operationId"))
        for m, p, op in ops
        if not OPERATION_ID.match(op.get("operationId") or "")
    ]
    assert not bad, f"operations without a well-formed operationId: {bad}"
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"operationIds used twice (rename an endpoint function): {dupes}"
    # Short: derived from the function name, never from the path.
    long = [i for i in ids if i is not None and len(i) > 40]
    assert not long, long


def test_well_known_ids_are_stable(spec: dict[str, Any]) -> None:
    found = {(m, p): op["operationId"] for m, p, op in _operations(spec)}
    wrong = {k: (found.get(k), v) for k, v in WELL_KNOWN.items() if found.get(k) != v}
    assert not wrong, f"(found, expected) operationIds: {wrong}"


def test_a_multi_method_route_gets_an_id_per_method() -> None:
    """A proxy route serving several methods (one endpoint) still has unique ids."""
    app = create_app(Engine(Registry({})), token="")

    @app.api_route("/_test/proxy/{path:path}", methods=["GET", "POST", "DELETE"])
    async def proxy_things(path: str) -> dict[str, str]:
        return {"path": path}

    item = app.openapi()["paths"]["/_test/proxy/{path}"]
    assert {m: op["operationId"] for m, op in item.items()} == {
        "get": "proxy_things_get",
        "post": "proxy_things_post",
        "delete": "proxy_things_delete",
    }
