"""The inspector: workflow history, queue contents and a one-glance summary."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from .common import ERRORS, engine_of, json_response, reject_unknown_query, resolve
from .models import ActorSummary, QueueContents, WorkflowHistory

router = APIRouter(
    tags=["inspector"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)]
)


@router.get(
    "/actors/{name}/{key}/inspector/workflow-history",
    response_model=WorkflowHistory,
    summary="Workflow history",
)
async def workflow_history(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response((await engine.inspector.history(actor_id)).model_dump())


@router.get(
    "/actors/{name}/{key}/inspector/queue",
    response_model=QueueContents,
    summary="Pending and in-flight queue messages",
)
async def queue(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    messages = await engine.inspector.queue_contents(actor_id)
    return json_response({"messages": [m.model_dump() for m in messages]})


@router.get(
    "/actors/{name}/{key}/inspector/summary",
    response_model=ActorSummary,
    summary="Actor summary: liveness, workflow status, queue depth, step counts",
)
async def summary(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    described = await engine.inspector.describe_actor(actor_id)
    out = ActorSummary.model_validate(
        {
            **described.model_dump(),
            "awake": bool(described.awake),
            "subscribers": described.subscribers or 0,
        }
    )
    return json_response(out.model_dump())
