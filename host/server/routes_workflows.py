"""DAG workflow definitions: the published JSON Schema and a validate route.

``POST /workflows/validate`` answers 200 ``{"valid": false, "error": {...}}`` for a
definition with a problem (a 400 is for a body that is not a JSON object): the
route's job is the verdict, and ``PUT /workflows/{name}`` (next) will 400.

Registering and running definitions (``PUT /workflows/{name}``, runs) are the
next part of issue 11 (docs/workflows.md).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from orchestrator.dag import WorkflowDefinition, load_definition
from orchestrator.errors import InvalidRequest

from .common import ERRORS, json_response, reject_unknown_query
from .models import ErrorDetail

router = APIRouter(
    tags=["workflows"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)]
)

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


@router.get("/workflows/schema.json", summary="The JSON Schema of a workflow definition")
async def schema() -> Response:
    return json_response(_SCHEMA)


@router.post(
    "/workflows/validate",
    response_model=ValidateResult,
    summary="Check a definition: valid, or the first error naming the field",
    openapi_extra={
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
    },
)
async def validate(request: Request) -> Response:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("body: a workflow definition (JSON object) is required", field="body")
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidRequest("body: not valid JSON", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body: a workflow definition is a JSON object", field="body")
    # The request itself was fine: a definition's problems are the answer (200), so
    # that any JSON object is an accepted request (the published contract).
    try:
        # A 256-step, densely connected definition takes a fraction of a second
        # to check: off the event loop.
        await asyncio.to_thread(load_definition, data)
    except InvalidRequest as err:
        return json_response({"valid": False, "error": err.to_dict()})
    return json_response({"valid": True, "error": None})
