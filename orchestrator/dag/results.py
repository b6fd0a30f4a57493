"""The view of a workflow run, built from its run record (``RunDetail``: record, meta
and history) — what ``GET /workflows/{name}/runs/{run_id}`` and
``client.workflows.get`` answer.

Full step results come from the recorded ``step-<id>`` outputs; the run's meta
(updated as steps start and end) fills in the steps that have no result yet.
"""

from __future__ import annotations

from typing import Any

from orchestrator.records import RunDetail

_STEP_PREFIX = "step-"
_CHECKPOINT_PREFIX = "checkpoint-"


def _status(detail: RunDetail) -> str:
    if detail.status == "failed" and isinstance(detail.error, dict):
        if detail.error.get("group") == "workflow" and detail.error.get("code") == "partial":
            return "partial"
    return detail.status


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


__all__ = ["workflow_view"]
