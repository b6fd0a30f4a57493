"""The inspector: workflow history, queue contents and a one-glance summary."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from orchestrator.errors import ActorNotFound

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
    return json_response((await engine.history(actor_id)).model_dump())


@router.get(
    "/actors/{name}/{key}/inspector/queue",
    response_model=QueueContents,
    summary="Pending and in-flight queue messages",
)
async def queue(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    messages = await engine.queue_contents(actor_id)
    return json_response({"messages": [m.model_dump() for m in messages]})


@router.get(
    "/actors/{name}/{key}/inspector/summary",
    response_model=ActorSummary,
    summary="Actor summary: liveness, workflow status, queue depth, step counts",
)
async def summary(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, actor_name, actor_key = await resolve(engine, name, key, create=False)
    rec = await engine.store.get_actor(actor_id)
    if rec is None:
        raise ActorNotFound(f"no actor {actor_name!r} with key {list(actor_key)!r}")
    history = await engine.history(actor_id)
    messages = await engine.queue_contents(actor_id)
    inst = engine.instances.get(actor_id)
    in_flight = sum(1 for m in messages if m.in_flight)
    out = ActorSummary(
        actor_id=actor_id,
        name=actor_name,
        key=list(actor_key),
        created_at=rec.created_at,
        awake=inst is not None,
        subscribers=len(inst.subscribers) if inst is not None else 0,
        is_workflow=history.is_workflow,
        workflow_status=history.workflow_status,
        queue_pending=len(messages) - in_flight,
        queue_in_flight=in_flight,
        history_entries=len(history.entries),
        entries_by_status=dict(Counter(e.status for e in history.entries)),
        running_steps=[e.path for e in history.entries if e.status == "running"],
    )
    return json_response(out.model_dump())
