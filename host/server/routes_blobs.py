"""The blob store over HTTP: how a client uploads a local repository (a git bundle)
for a run, so the server never opens a path the caller chose.

``POST /blobs`` (raw ``application/octet-stream`` body, at most ``AGENTVM_MAX_BLOB``
bytes, streamed to disk) → ``{"blob": "sha256:<hex>", "size": n}``; a request then
names it, e.g. ``{"repo": "blob:sha256:<hex>"}``. ``HEAD``/``DELETE /blobs/{id}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel
from starlette.responses import Response

from host.blobs import BLOB_ID, BlobNotFound, BlobStore, BlobTooLarge, blob_store_for, parse_blob_id
from orchestrator.errors import AgentVMError

from .common import ERRORS, engine_of, json_response, reject_unknown_query

# Documented in the schema too, so a schema-valid id is a well-formed one.
BLOB_ID_PATH = Path(pattern=BLOB_ID.pattern, description="sha256:<64 lowercase hex digits>")

router = APIRouter(tags=["blobs"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])

OCTET_STREAM = "application/octet-stream"


class BlobStored(BaseModel):
    blob: str
    size: int


class UnsupportedMediaType(AgentVMError):
    group = "request"
    code = "unsupported_media_type"
    http_status = 415


def store_of(request: Request) -> BlobStore:
    store: BlobStore | None = getattr(request.app.state, "blobs", None)
    if store is None:
        store = request.app.state.blobs = blob_store_for(engine_of(request).config.db)
    return store


@router.post(
    "/blobs",
    summary="Upload a blob (e.g. a git bundle of a local repository)",
    response_model=BlobStored,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def upload_blob(request: Request) -> Response:
    # Only octet-stream: a browser cannot send it cross-origin without a preflight.
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != OCTET_STREAM:
        raise UnsupportedMediaType(
            f"POST /blobs takes the raw bytes as {OCTET_STREAM}, not {media or 'no type'}",
            field="content-type",
        )
    store = store_of(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > store.max_blob:
        raise BlobTooLarge(
            f"blob of {declared} bytes exceeds AGENTVM_MAX_BLOB ({store.max_blob})",
            size=int(declared),
            limit=store.max_blob,
        )

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return json_response(await store.put(body()), status=201)


@router.head("/blobs/{blob_id}", summary="Whether a blob is stored (its size)")
async def head_blob(request: Request, blob_id: str = BLOB_ID_PATH) -> Response:
    store = store_of(request)
    parse_blob_id(blob_id, "blob_id")
    try:
        size = await store.size(blob_id)
    except BlobNotFound:
        return Response(status_code=404, media_type="application/json")
    return Response(
        status_code=200, headers={"content-length": str(size)}, media_type="application/json"
    )


@router.delete("/blobs/{blob_id}", summary="Delete a blob")
async def delete_blob(request: Request, blob_id: str = BLOB_ID_PATH) -> Response:
    parse_blob_id(blob_id, "blob_id")
    if not await store_of(request).delete(blob_id):
        raise BlobNotFound(f"no blob {blob_id}", blob=blob_id)
    return json_response({"deleted": blob_id})
