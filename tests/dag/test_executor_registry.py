"""The ``workflows`` actor in process (no Docker): the versioned registry, send-time
checks of a run request, and a run whose steps are all skipped (no vm needed), seen
through ``workflow_view``."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import setup
from orchestrator.builtin import workflows
from orchestrator.dag import WorkflowNotFound, workflow_view
from orchestrator.errors import InvalidRequest

DEFN: dict[str, Any] = {
    "name": "wf",
    "params": [{"name": "go", "type": "boolean", "default": False}],
    "steps": [
        {"id": "a", "prompt": "first", "when": {"param": "go"}},
        {"id": "b", "prompt": "after {{steps.a.text}}", "depends_on": ["a"]},
    ],
}


def _registry() -> Any:
    return setup(use={"workflows": workflows()})


async def test_versions_of_a_definition(make_engine) -> None:
    async with make_engine(_registry()) as engine:
        wf = engine.client().workflows.get_or_create(["wf"])
        with pytest.raises(WorkflowNotFound):
            await wf.get_definition()
        assert await wf.put_definition(DEFN) == {"name": "wf", "version": 1, "created": True}
        assert await wf.put_definition(DEFN) == {"name": "wf", "version": 1, "created": False}
        v2 = {**DEFN, "description": "two"}
        assert (await wf.put_definition(v2))["version"] == 2
        # An explicit higher version is kept; a lower one never goes back.
        assert (await wf.put_definition({**DEFN, "version": 7}))["version"] == 7
        assert (await wf.put_definition({**v2, "description": "3"}))["version"] == 8
        assert [v["version"] for v in await wf.versions()] == [1, 2, 7, 8]
        assert (await wf.get_definition(2))["description"] == "two"
        assert (await wf.get_definition())["version"] == 8
        with pytest.raises(WorkflowNotFound):
            await wf.get_definition(3)
        summary = await wf.summary()
        assert summary["name"] == "wf" and summary["latest"] == 8
        assert summary["params"][0]["name"] == "go"
        with pytest.raises(InvalidRequest) as other:
            await wf.put_definition({**DEFN, "name": "other"})
        assert other.value.metadata["field"] == "definition.name"
        with pytest.raises(InvalidRequest) as bad:
            await wf.put_definition({**DEFN, "steps": [{"id": "a"}]})
        assert bad.value.metadata["field"] == "steps.0.prompt"


async def test_a_run_request_is_checked_at_send_time(make_engine) -> None:
    async with make_engine(_registry()) as engine:
        wf = engine.client().workflows.get_or_create(["wf"])
        cases = [
            ({"definition": DEFN, "params": {"go": "yes"}}, "body.params.go"),
            ({"definition": DEFN, "params": {"nope": 1}}, "body.params.nope"),
            ({"definition": {**DEFN, "steps": []}}, "body.definition.steps"),
            ({"definition": DEFN, "keep_vm": "sometimes"}, "body.keep_vm"),
            ({"definition": DEFN, "repo": "/etc"}, "body.repo"),
            ({"params": {}}, "body.definition"),
        ]
        for body, field in cases:
            with pytest.raises(InvalidRequest) as err:
                await wf.send("run", body)
            assert err.value.metadata["field"] == field, (body, err.value)
        assert await wf.runs() == []


async def test_a_run_of_skipped_steps_completes(make_engine) -> None:
    """Every step's ``when`` is false (b's names a's status), so no vm is needed: the
    run completes with both skipped for their condition, and says so in its events."""
    defn = {
        **DEFN,
        "steps": [
            {"id": "a", "prompt": "first", "when": {"param": "go"}},
            {"id": "b", "prompt": "x", "depends_on": ["a"], "when": {"step": "a"}},
        ],
    }
    async with make_engine(_registry()) as engine:
        wf = engine.client().workflows.get_or_create(["wf"])
        sub = await wf.connect()
        sent = await wf.send("run", {"definition": defn}, wait=True, timeout=30)
        assert sent.status == "completed", sent
        result = sent.response
        assert result["status"] == "completed"
        assert result["steps"]["a"] == {"status": "skipped", "reason": "condition", "text": ""}
        assert result["steps"]["b"]["reason"] == "condition"
        assert result["params"] == {"go": False}
        assert sent.message_id is not None
        view = workflow_view(await wf.run(sent.message_id))
        assert view["status"] == "completed" and view["order"] == ["a", "b"]
        assert {k: v["status"] for k, v in view["steps"].items()} == {
            "a": "skipped",
            "b": "skipped",
        }
        names = []
        while not names or names[-1] != "workflow_completed":
            ev = await sub.next(timeout=10)
            if not ev.name.startswith("run_"):
                names.append(ev.name)
        await sub.close()
        assert names == ["workflow_started", "step_skipped", "step_skipped", "workflow_completed"]
