"""Sandbox files over plain HTTP, through the ``vm`` actor's actions.

``GET /vms/{key}/files/{path}`` → ``read_file(path)`` as raw bytes,
``PUT`` the same URL → ``write_file(path, content, {"parents": True})`` with the raw body,
``GET /vms/{key}/ls/{path}`` → ``readdir(path)``. Paths are absolute inside the
sandbox: ``/vms/fix-42/files/home/user/repo/README.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from host.sandbox.errors import FileTooLarge, SupervisorError
from host.vm.manager import manager_of
from orchestrator.errors import InvalidRequest

from .common import (
    ERRORS,
    engine_of,
    json_response,
    reject_unknown_query,
    resolve,
    settings_of,
)
from .models import FileListing, FileWritten
from .paths import decode_part

router = APIRouter(tags=["vms"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])

VM = "vm"


def _sandbox_path(raw: str) -> str:
    path = decode_part(raw, "path")
    if "\x00" in path:
        raise InvalidRequest("a path must not contain NUL", field="path")
    return path if path.startswith("/") else "/" + path


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"read_file returned {type(value).__name__}, not bytes")


@router.get(
    "/vms/{key}/files/{path:path}",
    summary="Download a file from a sandbox",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "description": "the file's bytes",
        }
    },
)
async def download(request: Request, key: str, path: str) -> Response:
    """Regular files only, streamed (host memory stays at the channel window), up to
    ``max_download`` bytes (413 ``file_too_large`` beyond)."""
    engine = engine_of(request)
    file_path = _sandbox_path(path)
    limit = settings_of(request).max_download
    actor_id, _, actor_key = await resolve(engine, VM, key, create=False)
    manager = manager_of(engine)
    if manager is None:  # a vm actor without a sandbox manager (tests): whole reads
        content = _as_bytes(await engine.call(actor_id, "read_file", [file_path]))
        if len(content) > limit:
            raise FileTooLarge(f"file is larger than {limit} bytes: {file_path}", path=file_path)
        return Response(content, media_type="application/octet-stream")
    stack = contextlib.AsyncExitStack()
    try:
        sandbox = await stack.enter_async_context(manager.sandbox_for(engine, list(actor_key)))
        info = await sandbox.stat(file_path)
        if info.type == "dir":
            raise SupervisorError(f"is a directory: {file_path}", code="EISDIR", path=file_path)
        if info.type != "file":
            raise SupervisorError(f"not a regular file: {file_path}", code="EINVAL", path=file_path)
        if info.size > limit:
            raise FileTooLarge(f"file is larger than {limit} bytes: {file_path}", path=file_path)
    except BaseException:
        await stack.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            # max_size again: the file may grow (or be swapped) after the stat.
            async for chunk in sandbox.read_file_stream(file_path, max_size=limit):
                yield chunk
        finally:
            await stack.aclose()

    return StreamingResponse(body(), media_type="application/octet-stream")


@router.put(
    "/vms/{key}/files/{path:path}",
    summary="Upload a file into a sandbox (raw request body)",
    response_model=FileWritten,
    openapi_extra={
        "requestBody": {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "required": False,
        }
    },
)
async def upload(request: Request, key: str, path: str) -> Response:
    engine = engine_of(request)
    file_path = _sandbox_path(path)
    content = await request.body()
    actor_id, _, _ = await resolve(engine, VM, key, create=True)
    # Like any upload: the directories on the way are created.
    await engine.call(actor_id, "write_file", [file_path, content, {"parents": True}])
    return json_response({"path": file_path, "size": len(content)})


@router.get("/vms/{key}/ls/{path:path}", response_model=FileListing, summary="List a directory")
async def listdir(request: Request, key: str, path: str) -> Response:
    engine = engine_of(request)
    dir_path = _sandbox_path(path)
    actor_id, _, _ = await resolve(engine, VM, key, create=False)
    entries = await engine.call(actor_id, "readdir", [dir_path])
    return json_response({"path": dir_path, "entries": entries})
