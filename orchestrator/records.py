"""Public read models of runs, as the engine, the HTTP API and the clients return them."""

from __future__ import annotations

import json
import traceback
from typing import Any

from pydantic import BaseModel, Field

from .errors import AgentVMError
from .inspect import HistoryEntry
from .storage.base import HistoryRecord, RunRecord, run_scope

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _loads(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def history_entry(h: HistoryRecord, *, strip: str = "") -> HistoryEntry:
    """``h`` as the inspector shows it; ``strip`` removes a scope prefix from the path."""
    path = h.path[len(strip) :] if strip and h.path.startswith(strip) else h.path
    return HistoryEntry(
        path=path,
        kind=h.kind,
        status=h.status,
        attempts=h.attempts,
        started_at=h.started_at,
        finished_at=h.finished_at,
        output=_loads(h.output),
        error=_loads(h.error),
        meta=_loads(h.meta),
    )


class RunInfo(BaseModel):
    """One run (a message on a ``queue(run=...)``) without its input, result and history."""

    run_id: int = Field(description="the message id of the request")
    actor_id: str
    name: str = Field(description="the actor's type")
    key: list[str]
    queue: str
    status: str = Field(description="queued, running, completed, failed or cancelled")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = Field(
        None, description="{group, code, message, metadata} of a failed run"
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="set by ctx.run_meta()")


class RunDetail(RunInfo):
    """A run with its input, result and workflow history (paths relative to the run)."""

    input: Any = None
    result: Any = None
    history: list[HistoryEntry] = Field(default_factory=list)


def run_info(rec: RunRecord) -> RunInfo:
    return RunInfo(
        run_id=rec.run_id,
        actor_id=rec.actor_id,
        name=rec.name,
        key=list(rec.key),
        queue=rec.queue,
        status=rec.status,
        created_at=rec.created_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        error=_loads(rec.error),
        meta=json.loads(rec.meta or "{}"),
    )


def run_detail(rec: RunRecord, history: list[HistoryRecord]) -> RunDetail:
    prefix = run_scope(rec.run_id) + "/"
    return RunDetail(
        **run_info(rec).model_dump(),
        input=_loads(rec.input),
        result=_loads(rec.result),
        history=[history_entry(h, strip=prefix) for h in history],
    )


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(_dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def error_dict(exc: BaseException, **metadata: Any) -> dict[str, Any]:
    """The stored error of a failed run: the same shape as an HTTP error.

    An :class:`AgentVMError` keeps its group and code; anything else is group
    ``run`` with the exception's class name as its code."""
    if isinstance(exc, AgentVMError):
        group, code, message = exc.group, exc.code, exc.message
        meta: dict[str, Any] = {k: _json_safe(v) for k, v in exc.metadata.items()}
    else:
        group, code, message = "run", type(exc).__name__, str(exc) or type(exc).__name__
        meta = {}
    # The tail of the traceback (with its causes): what an operator needs to debug.
    meta["traceback"] = "".join(traceback.format_exception(exc))[-2000:]
    meta.update({k: _json_safe(v) for k, v in metadata.items()})
    return {"group": group, "code": code, "message": message, "metadata": meta}
