"""DAG workflow definitions: validation errors name the field, params, templates,
builder round-trip, levels and dependents (pure Python, no Docker)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from orchestrator.dag import (
    WorkflowDefinition,
    bind_params,
    define,
    dependents,
    evaluate,
    levels,
    load_definition,
    references,
    render,
)
from orchestrator.errors import InvalidRequest


def _defn(steps: list[dict[str, Any]], params: list[dict[str, Any]] | None = None) -> Any:
    return {"name": "wf", "params": params or [], "steps": steps}


def _error(data: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        load_definition(data)
    return info.value


DIAMOND = _defn(
    [
        {"id": "a", "prompt": "start {{params.repo}}"},
        {"id": "b", "prompt": "left {{steps.a.text}}", "depends_on": ["a"]},
        {"id": "c", "prompt": "right {{ steps.a.tool_calls }}", "depends_on": ["a"]},
        {"id": "d", "prompt": "{{steps.b.text}} {{steps.c.text}}", "depends_on": ["b", "c"]},
        {"id": "e", "prompt": "{{steps.a.files./home/user/out.txt}}", "depends_on": ["d"]},
    ],
    [{"name": "repo", "required": True}],
)


def test_a_diamond_is_valid_and_levelled() -> None:
    defn = load_definition(DIAMOND)
    assert levels(defn) == [["a"], ["b", "c"], ["d"], ["e"]]
    assert dependents(defn, "a") == ["b", "c", "d", "e"]
    assert dependents(defn, "b") == ["d", "e"]
    assert dependents(defn, "e") == []


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ([{"id": "a", "prompt": "p"}, {"id": "a", "prompt": "q"}], "steps.1.id", "duplicate"),
        (
            [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p", "depends_on": ["a", "zz"]}],
            "steps.1.depends_on.1",
            "'zz'",
        ),
        ([{"id": "a", "prompt": "p", "depend_on": []}], "steps.0.depend_on", "Extra"),
        ([{"id": "a.b", "prompt": "p"}], "steps.0.id", "pattern"),
        ([{"id": "a", "prompt": "p", "mode": "chat"}], "steps.0.mode", "agent"),
        ([{"id": "a", "prompt": "p", "timeout": 0}], "steps.0.timeout", "greater"),
        ([{"id": "a", "prompt": "p", "retries": -1}], "steps.0.retries", "greater"),
        ([{"id": "a", "prompt": "{{params.nope}}"}], "steps.0.prompt", "params.nope"),
        ([{"id": "a", "prompt": "p", "vm": "../x"}], "steps.0.vm", "pattern"),
        ([{"id": "a", "prompt": "{{ env.HOME }}"}], "steps.0.prompt", "env.HOME"),
        ([{"id": "a", "prompt": "{{steps.a.text}}"}], "steps.0.prompt", "steps.a.text"),
        ([{"id": "a", "prompt": "{{steps.b.stdout}}"}], "steps.0.prompt", "not a reference"),
        ([{"id": "a", "prompt": "{{steps.b.files.../x}}"}], "steps.0.prompt", "'..'"),
        (
            [
                {"id": "a", "prompt": "p"},
                {"id": "b", "prompt": "p", "system_prompt": "{{params.x}}"},
            ],
            "steps.1.system_prompt",
            "params.x",
        ),
        ([{"id": "a", "prompt": "p", "when": {"bogus": 1}}], "steps.0.when", "param, step"),
        ([{"id": "a", "prompt": "p", "when": {"param": "zz"}}], "steps.0.when.param", "'zz'"),
        (
            [{"id": "a", "prompt": "p", "when": {"all": [{"step": "b", "status": "completed"}]}}],
            "steps.0.when.all.0.step",
            "dependencies",
        ),
        (
            [{"id": "a", "prompt": "p", "when": {"not": {"step": "a", "status": "done"}}}],
            "steps.0.when.not.status",
            "completed",
        ),
        ([], "steps", "at least 1"),
    ],
)
def test_validation_errors_name_the_field(steps: list[Any], field: str, words: str) -> None:
    err = _error(_defn(steps))
    assert err.metadata["field"] == field, err.message
    assert words in err.message


def test_a_step_reference_must_be_a_dependency_naming_step_and_reference() -> None:
    # c runs next to b, not after it: its prompt cannot read b's text.
    err = _error(
        _defn(
            [
                {"id": "a", "prompt": "p"},
                {"id": "b", "prompt": "p", "depends_on": ["a"]},
                {"id": "c", "prompt": "see {{ steps.b.text }}", "depends_on": ["a"]},
            ]
        )
    )
    assert err.metadata == {
        "field": "steps.2.prompt",
        "step": "c",
        "reference": "steps.b.text",
    }
    assert "'c'" in err.message and "steps.b.text" in err.message


def test_an_unknown_param_names_step_and_reference() -> None:
    err = _error(_defn([{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "{{ params.x }}"}]))
    assert err.metadata == {"field": "steps.1.prompt", "step": "b", "reference": "params.x"}
    named = load_definition(_defn([{"id": "a", "prompt": "p", "vm": "builder-1"}]))
    assert named.steps[0].vm == "builder-1"


def test_cycles_are_named() -> None:
    err = _error(
        _defn(
            [
                {"id": "a", "prompt": "p"},
                {"id": "b", "prompt": "p", "depends_on": ["a", "d"]},
                {"id": "c", "prompt": "p", "depends_on": ["b"]},
                {"id": "d", "prompt": "p", "depends_on": ["c"]},
            ]
        )
    )
    assert err.metadata["field"] == "steps"
    assert err.metadata["cycle"] == ["b", "d", "c", "b"]
    assert "b -> d -> c -> b" in err.message
    self_loop = _error(_defn([{"id": "a", "prompt": "p", "depends_on": ["a"]}]))
    assert self_loop.metadata["cycle"] == ["a", "a"]


def test_a_long_chain_does_not_hit_the_recursion_limit() -> None:
    steps = [{"id": "s0", "prompt": "p"}] + [
        {"id": f"s{i}", "prompt": "p", "depends_on": [f"s{i - 1}"]} for i in range(1, 256)
    ]
    defn = load_definition(_defn(steps))
    assert len(levels(defn)) == 256
    too_many = _error(_defn([*steps, {"id": "extra", "prompt": "p"}]))
    assert too_many.metadata["field"] == "steps"


def test_a_document_that_is_not_a_definition() -> None:
    for data in ("{", "[1]", [1], 3):
        err = _error(data)
        assert err.metadata["field"] == "definition"


def test_param_definitions_are_checked() -> None:
    err = _error(_defn([{"id": "a", "prompt": "p"}], [{"name": "x"}, {"name": "x"}]))
    assert err.metadata["field"] == "params.1.name"
    err = _error(
        _defn([{"id": "a", "prompt": "p"}], [{"name": "x", "type": "number", "default": "1"}])
    )
    assert err.metadata["field"] == "params.0.default"
    err = _error(_defn([{"id": "a", "prompt": "p"}], [{"name": "x", "type": "date"}]))
    assert err.metadata["field"] == "params.0.type"


def test_bind_params() -> None:
    defn = (
        define("wf")
        .param("repo", required=True)
        .param("n", "number", default=3)
        .param("deep", "boolean")
        .param("opts", "object", default={"a": 1})
        .step("a", prompt="{{params.repo}}")
        .build()
    )
    assert bind_params(defn, {"repo": "r"}) == {
        "repo": "r",
        "n": 3,
        "deep": None,
        "opts": {"a": 1},
    }
    assert bind_params(defn, {"repo": "r", "n": 2.5, "deep": True})["n"] == 2.5
    cases: list[tuple[Any, str, str]] = [
        ({}, "params.repo", "required"),
        ({"repo": "r", "colour": 1}, "params.colour", "unknown"),
        ({"repo": 1}, "params.repo", "string"),
        ({"repo": "r", "n": True}, "params.n", "number"),
        ({"repo": "r", "deep": "yes"}, "params.deep", "boolean"),
        ({"repo": "r", "opts": [1]}, "params.opts", "object"),
        ([1], "params", "object"),
    ]
    for given, field, words in cases:
        with pytest.raises(InvalidRequest) as info:
            bind_params(defn, given)
        assert info.value.metadata["field"] == field
        assert words in info.value.message


def test_interpolation() -> None:
    fetched: list[tuple[str, str]] = []

    async def fetch(step: str, path: str) -> str:
        fetched.append((step, path))
        return "FILE"

    template = (
        "{{ params.repo }}|{{params.n}}|{{params.opts}}|{{steps.a.text}}|"
        "{{steps.a.tool_calls}}|{{steps.a.files./work/out.txt}}|{{steps.skipped.text}}"
    )
    refs = [str(r) for r in references(template)]
    assert refs == [
        "params.repo",
        "params.n",
        "params.opts",
        "steps.a.text",
        "steps.a.tool_calls",
        "steps.a.files./work/out.txt",
        "steps.skipped.text",
    ]
    text = asyncio.run(
        render(
            template,
            params={"repo": "r", "n": 2, "opts": {"k": True}},
            steps={
                # a step's answer holding a reference is not expanded again
                "a": {"text": "said {{params.repo}}", "tool_calls": [{"name": "bash"}]},
            },
            fetch_file=fetch,
        )
    )
    assert text == 'r|2|{"k": true}|said {{params.repo}}|[{"name": "bash"}]|FILE|'
    assert fetched == [("a", "/work/out.txt")]
    assert asyncio.run(render("no refs { {x}} }}", params={}, steps={})) == "no refs { {x}} }}"
    with pytest.raises(InvalidRequest):
        asyncio.run(render("{{params.x}}", params={}, steps={}))


def test_when_conditions_evaluate() -> None:
    defn = load_definition(
        _defn(
            [
                {"id": "a", "prompt": "p"},
                {
                    "id": "b",
                    "prompt": "p",
                    "depends_on": ["a"],
                    "when": {
                        "all": [
                            {"param": "deep", "equals": True},
                            {"not": {"step": "a", "status": "failed"}},
                            {"any": [{"param": "n", "equals": 1}, {"param": "name"}]},
                        ]
                    },
                },
            ],
            [
                {"name": "deep", "type": "boolean"},
                {"name": "n", "type": "number"},
                {"name": "name"},
            ],
        )
    )
    cond = defn.steps[1].when
    assert cond is not None
    ok = {"deep": True, "n": 1, "name": None}
    assert evaluate(cond, ok, {"a": "completed"})
    assert not evaluate(cond, ok, {"a": "failed"})
    assert not evaluate(cond, {**ok, "deep": 1}, {"a": "completed"})  # 1 is not True
    assert not evaluate(cond, {**ok, "n": 2}, {"a": "completed"})
    assert evaluate(cond, {**ok, "n": 2, "name": "x"}, {"a": "completed"})


def test_builder_round_trips_with_json() -> None:
    built = (
        define("fix-review", version=2, description="fix then review", max_concurrency=2)
        .param("repo", required=True, description="the repo")
        .param("strict", "boolean", default=False)
        .step("fix", prompt="fix {{params.repo}}", agent_type="claude", model="m1", checkpoint=True)
        .step(
            "review",
            prompt="review {{steps.fix.text}}",
            depends_on=["fix"],
            mode="single_shot",
            system_prompt="be strict",
            allowed_tools=["read"],
            timeout=30.5,
            retries=2,
            vm="fresh",
            when={"any": [{"param": "strict", "equals": True}, {"step": "fix"}]},
            continue_on_failure=True,
        )
        .build()
    )
    as_json = built.model_dump_json()
    assert WorkflowDefinition.model_validate_json(as_json) == built
    assert load_definition(as_json) == built
    assert load_definition(json.loads(as_json)) == built
    by_hand = load_definition(
        {
            "name": "fix-review",
            "version": 2,
            "description": "fix then review",
            "max_concurrency": 2,
            "params": [
                {"name": "repo", "required": True, "description": "the repo"},
                {"name": "strict", "type": "boolean", "default": False},
            ],
            "steps": [
                {
                    "id": "fix",
                    "prompt": "fix {{params.repo}}",
                    "agent_type": "claude",
                    "model": "m1",
                    "checkpoint": True,
                },
                {
                    "id": "review",
                    "prompt": "review {{steps.fix.text}}",
                    "depends_on": ["fix"],
                    "mode": "single_shot",
                    "system_prompt": "be strict",
                    "allowed_tools": ["read"],
                    "timeout": 30.5,
                    "retries": 2,
                    "vm": "fresh",
                    "when": {"any": [{"param": "strict", "equals": True}, {"step": "fix"}]},
                    "continue_on_failure": True,
                },
            ],
        }
    )
    assert by_hand == built
    assert json.loads(by_hand.model_dump_json()) == json.loads(as_json)


def test_builder_errors_name_the_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        define("wf").step("a", prompt="p", depends_on=["missing"]).build()
    assert info.value.metadata["field"] == "steps.0.depends_on.0"
    with pytest.raises(InvalidRequest) as info:
        define("wf").step("a", prompt="p", modle="x").build()
    assert info.value.metadata["field"] == "steps.0.modle"


def test_json_schema_describes_the_definition() -> None:
    schema = WorkflowDefinition.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "steps"}
    step = schema["$defs"]["StepDef"]
    assert {"id", "prompt", "depends_on", "when", "vm", "mode", "checkpoint"} <= set(
        step["properties"]
    )
    assert "not" in schema["$defs"]["NotCondition"]["properties"]


def test_race_and_check_fields() -> None:
    """A race has 2-8 candidates overriding the step's fields; their prompt templates
    are checked like the step's; ``check`` is a command on any step."""
    ok = load_definition(
        _defn(
            [
                {"id": "a", "prompt": "go", "check": "sh test.sh"},
                {
                    "id": "r",
                    "prompt": "fix after {{steps.a.text}}",
                    "depends_on": ["a"],
                    "check": "sh test.sh",
                    "race": [{"model": "m1"}, {"prompt": "other {{params.x}}"}, {}],
                },
            ],
            [{"name": "x"}],
        )
    )
    race = ok.steps[1].race
    assert race is not None and [c.model for c in race] == ["m1", None, None]
    assert ok.steps[0].check == "sh test.sh" and ok.steps[0].race is None
    one = _error(_defn([{"id": "r", "prompt": "p", "race": [{}]}]))
    assert one.metadata["field"] == "steps.0.race"
    nine = _error(_defn([{"id": "r", "prompt": "p", "race": [{}] * 9}]))
    assert nine.metadata["field"] == "steps.0.race"
    unknown = _error(_defn([{"id": "r", "prompt": "p", "race": [{}, {"prompt": "{{params.y}}"}]}]))
    assert unknown.metadata["field"] == "steps.0.race.1.prompt"
    assert "params.y" in unknown.message
    not_dep = _error(
        _defn(
            [
                {"id": "a", "prompt": "p"},
                {"id": "r", "prompt": "p", "race": [{}, {"system_prompt": "{{steps.a.text}}"}]},
            ]
        )
    )
    assert not_dep.metadata["field"] == "steps.1.race.1.system_prompt"
    typo = _error(_defn([{"id": "r", "prompt": "p", "race": [{}, {"modle": "m"}]}]))
    assert typo.metadata["field"] == "steps.0.race.1.modle"
    built = (
        define("wf")
        .step("a", prompt="p", check="true", race=[{"model": "x"}, {"model": "y"}])
        .build()
    )
    assert WorkflowDefinition.model_validate(built.model_dump(mode="json")) == built
