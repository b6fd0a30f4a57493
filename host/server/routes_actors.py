"""Actors: get-or-create, list, destroy, actions, queue sends, state."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from orchestrator.errors import ActorAlreadyExists, ActorNotFound
from orchestrator.keys import ActorKey
from orchestrator.wire import from_wire

from .common import (
    ERRORS,
    check_action,
    check_queue,
    checker_of,
    engine_of,
    json_response,
    reject_unknown_query,
    resolve,
    settings_of,
)
from .models import (
    ActionRequest,
    ActionResponse,
    ActorInfo,
    ActorList,
    ActorRef,
    CreateActorRequest,
    DestroyResponse,
    SendRequest,
    SendResponse,
    StateResponse,
)
from .paths import parse_key, parse_name

router = APIRouter(tags=["actors"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])

KEY_DOC = "key parts joined by ',', each percent-encoded (',' in a part is %2C)"
CREATE_DOC = "create the actor if it does not exist (get-or-create); false: 404 instead"


@router.get("/actors", response_model=ActorList, summary="List actors")
async def list_actors(
    request: Request,
    name: str | None = Query(None, description="only this actor type"),
    workflow_status: Literal["running", "completed", "failed", "cancelled"] | None = Query(
        None, description="only actors whose main workflow has this status (e.g. failed)"
    ),
) -> Response:
    actors = await engine_of(request).list_actors(name, workflow_status=workflow_status)
    return json_response({"actors": [a.model_dump() for a in actors]})


@router.post("/actors/{name}/{key}", response_model=ActorRef, summary="Get or create an actor")
async def get_or_create(
    request: Request,
    name: str,
    key: str,
    body: CreateActorRequest | None = None,
    if_exists: Literal["return", "error"] = Query(
        "return", description="'error': 409 if the actor already exists (create only)"
    ),
) -> Response:
    engine = engine_of(request)
    actor_name = parse_name(name, "name")
    actor_key: ActorKey = parse_key(key)
    input = from_wire(body.input, where="input") if body is not None else None
    created = False
    if if_exists == "error":
        actor_id = await engine.create(actor_name, actor_key, input=input)
        created = True
    else:
        try:
            actor_id = await engine.resolve(actor_name, actor_key, create=False)
        except ActorNotFound:
            try:
                actor_id = await engine.create(actor_name, actor_key, input=input)
                created = True
            except ActorAlreadyExists:  # created concurrently by someone else
                actor_id = await engine.resolve(actor_name, actor_key, create=False)
    return json_response(
        {"actor_id": actor_id, "name": actor_name, "key": list(actor_key), "created": created}
    )


@router.get("/actors/{name}/{key}", response_model=ActorInfo, summary="Describe an actor")
async def get_actor(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    info = await engine.inspector.get_actor(actor_id)
    return json_response(info.model_dump())


@router.delete("/actors/{name}/{key}", response_model=DestroyResponse, summary="Destroy an actor")
async def destroy(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    await engine.destroy(actor_id)
    return json_response({"actor_id": actor_id, "destroyed": True})


@router.post(
    "/actors/{name}/{key}/actions/{action}",
    response_model=ActionResponse,
    summary="Call an action",
)
async def call_action(
    request: Request,
    name: str,
    key: str,
    action: str,
    body: ActionRequest | None = None,
    create: bool = Query(True, description=CREATE_DOC),
) -> Response:
    engine = engine_of(request)
    actor_name = parse_name(name, "name")
    action_name = parse_name(action, "action")
    check_action(engine, actor_name, action_name)
    args = from_wire(body.args, where="args") if body is not None else []
    args = checker_of(request).check(actor_name, action_name, args)
    actor_id, _, _ = await resolve(engine, name, key, create=create)
    output = await engine.call(actor_id, action_name, args)
    return json_response({"output": output})


@router.post(
    "/actors/{name}/{key}/queues/{queue}",
    response_model=SendResponse,
    summary="Send a message to a queue",
)
async def send(
    request: Request,
    name: str,
    key: str,
    queue: str,
    body: SendRequest | None = None,
    create: bool = Query(True, description=CREATE_DOC),
) -> Response:
    engine = engine_of(request)
    req = body or SendRequest()
    queue_name = parse_name(queue, "queue")
    check_queue(engine, parse_name(name, "name"), queue_name)
    payload = from_wire(req.body, where="body")
    actor_id, _, _ = await resolve(engine, name, key, create=create)
    timeout: float | None = None
    if req.wait:
        cap = settings_of(request).max_wait_ms
        timeout = min(req.timeout_ms if req.timeout_ms is not None else cap, cap) / 1000
    result = await engine.send(actor_id, queue_name, payload, wait=req.wait, timeout=timeout)
    out: dict[str, object] = {"status": result.status, "message_id": result.message_id}
    if result.status == "completed":
        out["response"] = result.response
    elif result.status == "failed":
        out["error"] = result.error
    return json_response(out)


@router.get("/actors/{name}/{key}/state", response_model=StateResponse, summary="Actor state")
async def get_state(request: Request, name: str, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    return json_response({"state": await engine.get_state(actor_id)})
