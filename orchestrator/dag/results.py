"""The shapes of a workflow run's results: its errors, a step's error and meta entry,
and the view of a run, built from its run record (``RunDetail``: record, meta and
history) — what ``GET /workflows/{name}/runs/{run_id}`` and ``client.workflows.get``
answer.

Full step results come from the recorded ``step-<id>`` outputs; the run's meta
(updated as steps start and end) fills in the steps that have no result yet.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import AgentVMError
from orchestrator.records import RunDetail

# What the run's meta keeps of a step's text (the full text is its recorded result).
PREVIEW = 2 * 1024
# The most of an error message (and of its metadata, as JSON) a step result keeps.
MAX_ERROR = 8 * 1024
_STEP_PREFIX = "step-"
_CHECKPOINT_PREFIX = "checkpoint-"


def _status(detail: RunDetail) -> str:
    if detail.status == "failed" and isinstance(detail.error, dict):
        if detail.error.get("group") == "workflow" and detail.error.get("code") == "partial":
            return "partial"
    return detail.status


class WorkflowFailed(AgentVMError):
    """A run ended ``partial`` (some steps failed, some completed) or ``failed``."""

    group = "workflow"
    code = "failed"
    http_status = 500

    def __init__(self, message: str, *, status: str, failed: list[str]) -> None:
        super().__init__(message, status=status, failed=failed)
        self.code = status


class WorkflowNotFound(AgentVMError):
    group = "workflow"
    code = "not_found"
    http_status = 404


def cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def step_error(exc: BaseException) -> dict[str, Any]:
    """A step's error as stored in its result, the meta and events: bounded."""
    if isinstance(exc, AgentVMError):
        meta: Any = {k: v for k, v in exc.metadata.items() if k != "traceback"}
        try:
            text = json.dumps(meta, default=repr)
        except (TypeError, ValueError):
            text = repr(meta)
        if len(text) > MAX_ERROR:
            meta = {"truncated": text[:MAX_ERROR]}
        else:
            meta = json.loads(text)
        message = exc.message
        group, code = exc.group, exc.code
    else:
        group, code, message, meta = "run", type(exc).__name__, str(exc), {}
    return {"group": group, "code": code, "message": cap(message, MAX_ERROR), "metadata": meta}


def meta_of(result: dict[str, Any]) -> dict[str, Any]:
    """A completed step's entry in the run's meta."""
    meta = {
        "status": "completed",
        "attempts": result.get("attempts"),
        "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
        "duration_ms": result.get("duration_ms"),
        "text_preview": cap(str(result.get("text") or ""), PREVIEW),
        "vm": result.get("vm"),
    }
    for k in ("checkpoint", "winner", "restored_from"):
        if k in result:
            meta[k] = result[k]
    return meta


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def workflow_view(detail: RunDetail) -> dict[str, Any]:
    """``{run_id, workflow, version, status, params, steps, order, vms, error,
    created_at, started_at, finished_at}``; ``status`` is ``partial`` for a run that
    failed with some steps completed."""
    body = _obj(detail.input)
    definition = _obj(body.get("definition"))
    meta = _obj(detail.meta)
    order = [str(s.get("id")) for s in definition.get("steps") or [] if isinstance(s, dict)]
    meta_steps = _obj(meta.get("steps"))
    recorded: dict[str, dict[str, Any]] = {}
    checkpoints: dict[str, str] = {}
    failures: dict[str, Any] = {}
    for entry in detail.history:
        path = entry.path
        if "/" in path or entry.kind != "step":
            continue
        if path.startswith(_STEP_PREFIX):
            sid = path[len(_STEP_PREFIX) :]
            if entry.status == "completed" and isinstance(entry.output, dict):
                recorded[sid] = entry.output
            elif entry.status == "failed":
                failures[sid] = entry.error
        elif path.startswith(_CHECKPOINT_PREFIX) and entry.status == "completed":
            out = entry.output if isinstance(entry.output, dict) else {}
            checkpoints[path[len(_CHECKPOINT_PREFIX) :]] = str(out.get("name") or "")
    steps: dict[str, Any] = {}
    for sid in order or list(meta_steps):
        m = meta_steps.get(sid)
        m = m if isinstance(m, dict) else None
        if sid in recorded and (m is None or m.get("status") in ("completed", None)):
            step = dict(recorded[sid])
            if sid in checkpoints and "checkpoint" not in step:
                step["checkpoint"] = checkpoints[sid]
        elif m is not None:
            step = dict(m)
            step.setdefault("text", "")
        else:
            step = {"status": "pending", "text": ""}
        if step.get("status") == "failed" and not step.get("error") and sid in failures:
            step["error"] = failures[sid]
        if detail.status == "cancelled" and step.get("status") == "running":
            step["status"] = "cancelled"  # it was in flight when the run was cancelled
        steps[sid] = step
    result = _obj(detail.result)
    return {
        "run_id": detail.run_id,
        "workflow": meta.get("workflow") or definition.get("name") or result.get("workflow"),
        "version": meta.get("version") or definition.get("version"),
        "status": _status(detail),
        "params": meta.get("params", body.get("params", {})),
        "steps": steps,
        "order": order,
        "vms": meta.get("vms") or {},
        "error": detail.error,
        "created_at": detail.created_at,
        "started_at": detail.started_at,
        "finished_at": detail.finished_at,
    }


__all__ = [
    "WorkflowFailed",
    "WorkflowNotFound",
    "cap",
    "meta_of",
    "step_error",
    "workflow_view",
]
