"""The workflow definition routes (schema, validate) against a live server, and
``agentvm workflow validate`` as a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from orchestrator.dag import WorkflowDefinition, define
from tests.server.live import agentvm

GOOD: dict[str, Any] = {
    "name": "fix-review",
    "params": [{"name": "repo", "type": "string", "required": True}],
    "steps": [
        {"id": "fix", "prompt": "fix {{ params.repo }}"},
        {"id": "review", "prompt": "review {{steps.fix.text}}", "depends_on": ["fix"]},
    ],
}


def test_schema_is_published(http: httpx.Client) -> None:
    resp = http.get("/workflows/schema.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    schema = resp.json()
    assert schema["title"] == "agentvm DAG workflow definition"
    assert (
        schema["properties"].keys() == WorkflowDefinition.model_json_schema()["properties"].keys()
    )
    assert "StepDef" in schema["$defs"]
    spec = http.get("/openapi.json").json()
    assert {"/workflows/schema.json", "/workflows/validate"} <= set(spec["paths"])


def test_validate_accepts_a_good_definition(http: httpx.Client) -> None:
    resp = http.post("/workflows/validate", json=GOOD)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"valid": True, "error": None}
    built = define("b").step("a", prompt="p").build()
    resp = http.post(
        "/workflows/validate",
        content=built.model_dump_json(),
        headers={"content-type": "application/json"},
    )
    assert resp.json()["valid"] is True


def test_validate_names_the_field(http: httpx.Client) -> None:
    cases = [
        ({**GOOD, "stepz": []}, "stepz"),
        (
            {**GOOD, "steps": [GOOD["steps"][0], {**GOOD["steps"][1], "depends_on": ["nope"]}]},
            "steps.1.depends_on.0",
        ),
        (
            {**GOOD, "steps": [{**GOOD["steps"][0], "prompt": "{{params.token}}"}]},
            "steps.0.prompt",
        ),
        (
            {**GOOD, "steps": [{**GOOD["steps"][0], "depends_on": ["fix"]}]},
            "steps",
        ),
    ]
    for body, field in cases:
        resp = http.post("/workflows/validate", json=body)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["valid"] is False
        assert answer["error"]["group"] == "request"
        assert answer["error"]["metadata"]["field"] == field, answer


def test_validate_rejects_bad_bodies(http: httpx.Client) -> None:
    for content, ctype, status in [
        (b"[1, 2]", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b"", "application/json", 400),
        (json.dumps(GOOD).encode(), "text/plain", 415),
    ]:
        resp = http.post("/workflows/validate", content=content, headers={"content-type": ctype})
        assert resp.status_code == status, (content, resp.text)
        assert "error" in resp.json()
    resp = http.post("/workflows/validate", json=GOOD, headers={"origin": "https://evil.example"})
    assert resp.status_code == 403


def test_cli_validate(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    res = agentvm("workflow", "validate", str(good))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == b"OK: fix-review v1, 2 steps"
    res = agentvm("workflow", "validate", str(good), "--json")
    assert json.loads(res.stdout) == {"valid": True, "name": "fix-review", "version": 1}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**GOOD, "steps": [{"id": "a", "prompt": "{{steps.b.text}}"}]}))
    res = agentvm("workflow", "validate", str(bad))
    assert res.returncode == 1
    assert b"steps.0.prompt" in res.stderr and b"steps.b.text" in res.stderr
    res = agentvm("workflow", "validate", str(bad), "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"]["metadata"]["field"] == "steps.0.prompt"

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    res = agentvm("workflow", "validate", str(broken))
    assert res.returncode == 1 and b"error:" in res.stderr
    res = agentvm("workflow", "validate", str(tmp_path / "missing.json"))
    assert res.returncode == 1 and b"missing.json" in res.stderr
