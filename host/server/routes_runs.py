"""Runs (messages of a queue declared with ``run=``): list, inspect, cancel, retry;
and the escape hatch for an actor's failed main workflow (recover, cancel)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from .common import ERRORS, engine_of, json_response, reject_unknown_query, resolve
from .models import RunDetail, RunInfo, RunList, WorkflowHistory

router = APIRouter(tags=["runs"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
STATUS_DOC = "only runs with this status"
RUN_ID = Path(description="the run id: the message_id its send answered", ge=1)


@router.get("/runs", response_model=RunList, summary="Runs across actors, newest first")
async def all_runs(
    request: Request,
    status: RunStatus | None = Query(None, description=STATUS_DOC),
    name: str | None = Query(None, description="only runs of this actor type"),
) -> Response:
    runs = await engine_of(request).list_runs(None, status=status, name=name)
    return json_response({"runs": [r.model_dump() for r in runs]})


@router.get("/actors/{name}/{key}/runs", response_model=RunList, summary="An actor's runs")
async def actor_runs(
    request: Request,
    name: str,
    key: str,
    status: RunStatus | None = Query(None, description=STATUS_DOC),
) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    runs = await engine.list_runs(actor_id, status=status)
    return json_response({"runs": [r.model_dump() for r in runs]})


@router.get(
    "/actors/{name}/{key}/runs/{run_id}",
    response_model=RunDetail,
    summary="A run: input, result or error, and its history",
)
async def get_run(request: Request, name: str, key: str, run_id: int = RUN_ID) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response((await engine.get_run(actor_id, run_id)).model_dump())


@router.post(
    "/actors/{name}/{key}/runs/{run_id}/cancel",
    response_model=RunInfo,
    summary="Cancel a queued or running run (409 run/not_cancellable once finished)",
)
async def cancel_run(request: Request, name: str, key: str, run_id: int = RUN_ID) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response((await engine.cancel_run(actor_id, run_id)).model_dump())


@router.post(
    "/actors/{name}/{key}/runs/{run_id}/retry",
    response_model=RunInfo,
    summary="Run a failed or cancelled run again from the step that failed",
)
async def retry_run(request: Request, name: str, key: str, run_id: int = RUN_ID) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response((await engine.retry_run(actor_id, run_id)).model_dump())


@router.post(
    "/actors/{name}/{key}/workflow/recover",
    response_model=WorkflowHistory,
    summary="Re-run an actor's failed main workflow from the step that failed",
)
async def recover_workflow(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response((await engine.recover_workflow(actor_id)).model_dump())


@router.post(
    "/actors/{name}/{key}/workflow/cancel",
    response_model=WorkflowHistory,
    summary="Mark an actor's running or failed main workflow cancelled",
)
async def cancel_workflow(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response((await engine.cancel_workflow(actor_id)).model_dump())
