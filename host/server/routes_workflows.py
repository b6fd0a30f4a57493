"""DAG workflows over HTTP: the JSON Schema, validate, register, run, watch.

A registered workflow is the ``workflows`` actor keyed ``[<name>]`` (versions in
its state); a run is one message on its ``run`` queue, a durable run
(docs/workflows.md). These routes only translate: definitions and params are
checked *before* the send so a caller's mistake is a 400 naming the field, and
the run's view is built from the run record (``orchestrator.dag.results``).

``POST /workflows/validate`` answers 200 ``{"valid": false, "error": {...}}`` for a
definition with a problem (a 400 is for a body that is not a JSON object): the
route's job is the verdict, while ``PUT /workflows/{name}`` 400s.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.responses import Response

from orchestrator import Event, Subscription
from orchestrator.dag import (
    WorkflowDefinition,
    WorkflowNotFound,
    bind_params,
    load_definition,
    workflow_view,
)
from orchestrator.errors import ActorNotFound, InvalidRequest

from .common import ERRORS, engine_of, json_response, reject_unknown_query, settings_of
from .models import ErrorDetail, JsonInt
from .routes_events import EventStreamResponse

router = APIRouter(
    tags=["workflows"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)]
)

ACTOR = "workflows"
QUEUE = "run"
RUN_ID = Path(description="the run id: the message_id of the run's send", ge=1)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# Published in OpenAPI, so clients (and the schema fuzzer) know a name's shape.
WF_NAME = Path(description="the workflow's name", pattern=_NAME.pattern)
FINISHED = {"completed", "partial", "failed", "cancelled"}
# Run records (not views) listed at most per request: a long-lived workflow has many.
MAX_LIST = 1000

_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    **WorkflowDefinition.model_json_schema(),
    "title": "agentvm DAG workflow definition",
}


class ValidateResult(BaseModel):
    valid: bool
    error: ErrorDetail | None = Field(
        None, description="the first problem, its metadata.field naming the place"
    )


class _RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict, description="the run's param values")
    wait: StrictBool = Field(False, description="answer once the run has finished (200)")
    timeout_ms: JsonInt | None = Field(
        None,
        ge=0,
        le=86_400_000,
        description="with wait: answer after this long anyway (202, the run goes on); "
        "default and cap: AGENTVM_MAX_WAIT_MS",
    )
    vm_key: str | None = Field(
        None, min_length=1, max_length=256, description="an existing vm as the run's shared vm"
    )
    repo: str | None = Field(
        None, min_length=1, max_length=4096, description="put into /home/user/repo first"
    )
    keep_vm: Literal["on_failure", "always", "never"] | None = Field(
        None, description="keep the run's vms after it (default on_failure)"
    )


class RunRequest(_RunOptions):
    """Start a run of a registered workflow."""

    version: JsonInt | None = Field(None, ge=1, description="a registered version (latest)")


class InlineRunRequest(_RunOptions):
    """Run a definition given in the request (nothing is registered)."""

    definition: dict[str, Any] = Field(description="a definition: see GET /workflows/schema.json")


class PutResult(BaseModel):
    name: str
    version: int
    created: bool = Field(description="false: identical to the latest version (unchanged)")


def _name(raw: str) -> str:
    if not _NAME.match(raw):
        raise InvalidRequest(
            f"name: {raw[:80]!r} is not a workflow name (letters, digits, _ and -, "
            "at most 64, not starting with a digit or -)",
            field="name",
        )
    return raw


async def _actor(request: Request, name: str, *, create: bool = False) -> str:
    try:
        return await engine_of(request).resolve(ACTOR, (_name(name),), create=create)
    except ActorNotFound:
        raise WorkflowNotFound(f"no workflow named {name!r}", workflow=name) from None


async def _json_object(request: Request, what: str) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise InvalidRequest(f"body: {what} (JSON object) is required", field="body")
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidRequest("body: not valid JSON", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"body: {what} is a JSON object", field="body")
    return data


async def _load(definition: dict[str, Any], prefix: str = "") -> WorkflowDefinition:
    """Parse and validate (off the loop: a big dense DAG takes a moment), errors
    naming ``<prefix><field>``."""
    try:
        return await asyncio.to_thread(load_definition, definition)
    except InvalidRequest as err:
        if not prefix:
            raise
        field = str(err.metadata.get("field") or "")
        where = f"{prefix}{field}" if field and field != "definition" else prefix.rstrip(".")
        metadata = {**err.metadata, "field": where}
        message = err.message
        if field and message.startswith(f"{field}:"):
            message = message[len(field) + 1 :].lstrip()
        raise InvalidRequest(f"{where}: {message}", **metadata) from None


def _status(record_status: str, error: Any) -> str:
    if record_status == "failed" and isinstance(error, dict) and error.get("code") == "partial":
        return "partial"
    return record_status


async def _view(request: Request, actor_id: str, run_id: int) -> dict[str, Any]:
    detail = await engine_of(request).get_run(actor_id, run_id)
    return workflow_view(detail)


def _view_response(view: dict[str, Any]) -> Response:
    return json_response(view, 200 if view.get("status") in FINISHED else 202)


async def _start(
    request: Request, actor_id: str, definition: dict[str, Any], body: _RunOptions
) -> Response:
    defn = await _load(definition)
    # Checked here too (the queue's body model checks again) so the 400 names
    # params.<name> exactly.
    bind_params(defn, body.params)
    message: dict[str, Any] = {"definition": definition, "params": body.params}
    for field in ("vm_key", "repo", "keep_vm"):
        value = getattr(body, field)
        if value is not None:
            message[field] = value
    timeout: float | None = None
    if body.wait:
        cap = settings_of(request).max_wait_ms
        timeout = min(body.timeout_ms if body.timeout_ms is not None else cap, cap) / 1000
    engine = engine_of(request)
    sent = await engine.send(actor_id, QUEUE, message, wait=body.wait, timeout=timeout)
    assert sent.message_id is not None  # a send always names its message
    return _view_response(await _view(request, actor_id, sent.message_id))


# --- definitions ---------------------------------------------------------------------------


@router.get("/workflows/schema.json", summary="The JSON Schema of a workflow definition")
async def schema() -> Response:
    return json_response(_SCHEMA)


_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "a definition: see GET /workflows/schema.json",
                }
            }
        },
    }
}


@router.post(
    "/workflows/validate",
    response_model=ValidateResult,
    summary="Check a definition: valid, or the first error naming the field",
    openapi_extra=_DEFINITION_BODY,
)
async def validate(request: Request) -> Response:
    data = await _json_object(request, "a workflow definition")
    # The request itself was fine: a definition's problems are the answer (200), so
    # that any JSON object is an accepted request (the published contract).
    try:
        await _load(data)
    except InvalidRequest as err:
        return json_response({"valid": False, "error": err.to_dict()})
    return json_response({"valid": True, "error": None})


@router.get("/workflows", summary="Registered workflows: name, latest version, params")
async def list_workflows(request: Request) -> Response:
    engine = engine_of(request)
    found: list[dict[str, Any]] = []
    for info in await engine.list_actors(ACTOR):
        try:
            summary = await engine.call(info.actor_id, "summary", [])
        except ActorNotFound:
            continue  # destroyed meanwhile
        # An actor that only ran inline definitions has nothing registered.
        if isinstance(summary, dict) and summary.get("latest"):
            found.append(summary)
    found.sort(key=lambda s: str(s.get("name", "")))
    return json_response(found)


@router.put(
    "/workflows/{name}",
    response_model=PutResult,
    summary="Register a definition (a new version unless identical to the latest)",
    openapi_extra=_DEFINITION_BODY,
)
async def put_workflow(request: Request, name: str = WF_NAME) -> Response:
    _name(name)
    data = await _json_object(request, "a workflow definition")
    if "name" in data and data["name"] != name:
        raise InvalidRequest(
            f"name: the definition is named {str(data['name'])[:80]!r}, the path {name!r}",
            field="name",
        )
    data = {**data, "name": name}
    await _load(data)
    actor_id = await _actor(request, name, create=True)
    return json_response(await engine_of(request).call(actor_id, "put_definition", [data]))


@router.get("/workflows/{name}", summary="A registered definition (latest or ?version=)")
async def get_workflow(
    request: Request,
    name: str = WF_NAME,
    version: int | None = Query(None, ge=1, description="this version (default: latest)"),
) -> Response:
    actor_id = await _actor(request, name)
    args = [version] if version is not None else []
    return json_response(await engine_of(request).call(actor_id, "get_definition", args))


@router.get("/workflows/{name}/versions", summary="A workflow's stored versions")
async def workflow_versions(request: Request, name: str = WF_NAME) -> Response:
    actor_id = await _actor(request, name)
    return json_response(await engine_of(request).call(actor_id, "versions", []))


# --- runs -------------------------------------------------------------------------------------


@router.post(
    "/workflows/runs",
    summary="Run an inline definition (202 while it runs; 200 with wait once finished)",
    status_code=202,
)
async def run_inline(request: Request, body: InlineRunRequest) -> Response:
    defn = await _load(body.definition, "definition.")
    actor_id = await _actor(request, defn.name, create=True)
    return await _start(request, actor_id, body.definition, body)


@router.post(
    "/workflows/{name}/runs",
    summary="Run a registered workflow (202 while it runs; 200 with wait once finished)",
    status_code=202,
)
async def run_workflow(
    request: Request, name: str = WF_NAME, body: RunRequest | None = None
) -> Response:
    req = body or RunRequest()
    actor_id = await _actor(request, name)
    args = [req.version] if req.version is not None else []
    definition = await engine_of(request).call(actor_id, "get_definition", args)
    return await _start(request, actor_id, definition, req)


@router.get("/workflows/{name}/runs", summary="A workflow's runs, newest first")
async def list_workflow_runs(
    request: Request,
    name: str = WF_NAME,
    limit: int = Query(100, ge=1, le=MAX_LIST, description="at most this many"),
) -> Response:
    actor_id = await _actor(request, name)
    runs = (await engine_of(request).list_runs(actor_id))[:limit]
    items = []
    for r in runs:
        meta = r.meta or {}
        steps = meta.get("steps") if isinstance(meta.get("steps"), dict) else {}
        items.append(
            {
                "run_id": r.run_id,
                "workflow": meta.get("workflow", name),
                "version": meta.get("version"),
                "status": _status(r.status, r.error),
                "created_at": r.created_at,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "error": r.error,
                "steps": {
                    sid: s.get("status") if isinstance(s, dict) else None
                    for sid, s in (steps or {}).items()
                },
            }
        )
    return json_response({"runs": items})


@router.get("/workflows/{name}/runs/{run_id}", summary="A run: status and every step's result")
async def get_workflow_run(request: Request, name: str = WF_NAME, run_id: int = RUN_ID) -> Response:
    actor_id = await _actor(request, name)
    return json_response(await _view(request, actor_id, run_id))


@router.post(
    "/workflows/{name}/runs/{run_id}/cancel",
    summary="Abort a run: in-flight prompts are cancelled, nothing new starts",
)
async def cancel_workflow_run(
    request: Request, name: str = WF_NAME, run_id: int = RUN_ID
) -> Response:
    actor_id = await _actor(request, name)
    await engine_of(request).cancel_run(actor_id, run_id)
    return json_response(await _view(request, actor_id, run_id))


@router.post(
    "/workflows/{name}/runs/{run_id}/retry",
    summary="Run a failed run again: completed steps are kept, failed ones run again",
)
async def retry_workflow_run(
    request: Request, name: str = WF_NAME, run_id: int = RUN_ID
) -> Response:
    actor_id = await _actor(request, name)
    await engine_of(request).retry_run(actor_id, run_id)
    return json_response(await _view(request, actor_id, run_id))


# --- events -----------------------------------------------------------------------------------

_RUN_END = {"run_completed", "run_failed", "run_cancelled"}


class _RunEvents:
    """The actor's subscription seen through one run: other runs' events are
    skipped (the subscription itself stays bounded), and the stream ends after the
    run's final ``run_*`` event."""

    def __init__(self, sub: Subscription, run_id: int, ended: bool) -> None:
        self.sub = sub
        self.run_id = run_id
        self.ended = ended

    async def next(self, timeout: float | None = None) -> Event:
        if self.ended:
            raise StopAsyncIteration
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = await self.sub.next(timeout=left)
            payload = ev.payload
            if isinstance(payload, dict) and payload.get("run_id") == self.run_id:
                if ev.name in _RUN_END:
                    self.ended = True
                return ev

    async def close(self) -> None:
        await self.sub.close()


@router.get(
    "/workflows/{name}/runs/{run_id}/events",
    summary="Server-sent events of one run (ends after the run's run_* final event)",
    response_class=EventStreamResponse,
    status_code=200,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def run_events(
    request: Request, name: str = WF_NAME, run_id: int = RUN_ID
) -> EventStreamResponse:
    engine = engine_of(request)
    settings = settings_of(request)
    actor_id = await _actor(request, name)
    sub = await engine.subscribe(
        actor_id,
        None,
        max_bytes=settings.subscriber_max_bytes,
        max_events=settings.subscriber_max_events,
    )
    try:
        # After subscribing, so that an end between the two is not missed.
        info = await engine.get_run(actor_id, run_id)
    except BaseException:
        await sub.close()
        raise
    events = _RunEvents(sub, run_id, ended=info.status in ("completed", "failed", "cancelled"))
    # EventStreamResponse only calls next() and close(): the filter stands in for it.
    return EventStreamResponse(
        cast(Subscription, events), actor_id, settings.subscriber_write_timeout_s
    )
