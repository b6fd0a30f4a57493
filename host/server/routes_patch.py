"""``GET /actors/{name}/{key}/runs/{run_id}/patch``: a run's fix as a patch file.

Generic: any run whose result has a ``patch`` field (a ``git format-patch`` mbox,
as ``automator.fixBug`` returns) is served as ``text/x-patch`` for ``git am``
(``agentvm apply``). The run is read through the engine's public run API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from orchestrator.errors import AgentVMError

from .common import ERRORS, engine_of, reject_unknown_query, resolve

router = APIRouter(tags=["runs"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)])


class NoPatch(AgentVMError):
    """The run has no patch: not finished, failed, or nothing changed."""

    group = "run"
    code = "no_patch"
    http_status = 404


def _result_of(run: Any) -> Any:
    if isinstance(run, dict):
        return run.get("result")
    return getattr(run, "result", None)


def _status_of(run: Any) -> Any:
    return run.get("status") if isinstance(run, dict) else getattr(run, "status", None)


@router.get(
    "/actors/{name}/{key}/runs/{run_id}/patch",
    summary="The run's fix as a patch (git format-patch mbox, for `git am`)",
    response_class=Response,
    responses={200: {"content": {"text/x-patch": {}}, "description": "the patch"}},
)
async def run_patch(request: Request, name: str, key: str, run_id: int) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, name, key, create=False)
    run = await engine.get_run(actor_id, run_id)
    result = _result_of(run)
    patch = result.get("patch") if isinstance(result, dict) else None
    if not isinstance(patch, str) or not patch:
        status = _status_of(run)
        why = "it changed nothing" if status == "completed" else f"it is {status}"
        raise NoPatch(f"run {run_id} has no patch: {why}", run_id=run_id, status=status)
    return Response(
        patch.encode(),
        media_type="text/x-patch; charset=utf-8",
        headers={
            # Agent-written text: a download, never rendered or sniffed by a browser.
            "Content-Disposition": f'attachment; filename="run-{run_id}.patch"',
            "X-Content-Type-Options": "nosniff",
        },
    )
