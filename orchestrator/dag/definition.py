"""The models of a DAG workflow definition (JSON or built with ``dag.define``).

Every model forbids unknown fields, so a typo (``depend_on``) is an error naming
the field rather than a silently ignored key. Conditions (``when``) are data, never
code: a small tree of ``param``/``step``/``not``/``all``/``any`` nodes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
)

from orchestrator.errors import InvalidRequest

# Names end up inside ``{{steps.<id>.text}}`` references and error paths: no dots,
# no braces, no whitespace.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
ParamType = Literal["string", "number", "boolean", "object"]
StepStatus = Literal["completed", "failed", "skipped"]
MAX_STEPS = 256
MAX_PARAMS = 64
MAX_CONDITION_ITEMS = 32
MAX_RACE = 8


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


class ParamDef(_Model):
    """A typed input of the workflow, bound at submit time."""

    name: str = Field(pattern=NAME_PATTERN, description="the param's name")
    type: ParamType = Field("string", description="string, number, boolean or object")
    required: bool = Field(False, description="a run must give it (no default applies)")
    default: Any = Field(None, description="the value when a run does not give it")
    description: str = Field("", max_length=2000)


class ParamCondition(_Model):
    """True when the param equals ``equals``; with ``equals`` null: when it is truthy."""

    param: str = Field(pattern=NAME_PATTERN)
    equals: Any = Field(None, description="the value to compare to; null: truthiness")


class StepCondition(_Model):
    """True when an earlier step (a dependency) ended with ``status``."""

    step: str = Field(pattern=NAME_PATTERN)
    status: StepStatus = "completed"


class NotCondition(_Model):
    not_: Condition = Field(alias="not")


class AllCondition(_Model):
    all: list[Condition] = Field(min_length=1, max_length=MAX_CONDITION_ITEMS)


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1, max_length=MAX_CONDITION_ITEMS)


_CONDITION_TAGS = {
    "param": ParamCondition,
    "step": StepCondition,
    "not": NotCondition,
    "all": AllCondition,
    "any": AnyCondition,
}


def _condition_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((tag for tag in _CONDITION_TAGS if tag in value), None)
    for tag, cls in _CONDITION_TAGS.items():
        if isinstance(value, cls):
            return tag
    return None


Condition = Annotated[
    Annotated[ParamCondition, Tag("param")]
    | Annotated[StepCondition, Tag("step")]
    | Annotated[NotCondition, Tag("not")]
    | Annotated[AllCondition, Tag("all")]
    | Annotated[AnyCondition, Tag("any")],
    Discriminator(
        _condition_tag,
        custom_error_type="invalid_condition",
        custom_error_message="a condition has one of the keys param, step, not, all, any",
    ),
]


class RaceCandidate(_Model):
    """One candidate of a race step: the step's fields it overrides."""

    agent_type: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=200_000, description="a template")
    prompt: str | None = Field(None, min_length=1, max_length=200_000, description="a template")


class StepDef(_Model):
    """One agent task of the DAG."""

    id: str = Field(pattern=NAME_PATTERN, description="unique within the workflow")
    prompt: str = Field(min_length=1, max_length=200_000, description="a template")
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_STEPS)
    agent_type: str | None = Field(None, max_length=200, description="the agent to run")
    model: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=200_000, description="a template")
    allowed_tools: list[str] | None = Field(None, max_length=256)
    mode: Literal["agent", "single_shot"] = "agent"
    timeout: float | None = Field(None, gt=0, le=86_400, description="seconds")
    retries: int = Field(0, ge=0, le=20)
    vm: str = Field(
        "shared",
        pattern=NAME_PATTERN,
        description='"shared" (one vm for the run), "fresh" (its own) or a named vm',
    )
    when: Condition | None = Field(None, description="run only if this holds, else skipped")
    continue_on_failure: bool = Field(
        False, description="if it fails, its dependents still run (the run ends partial)"
    )
    checkpoint: bool = Field(False, description="checkpoint the vm's workspace after it")
    check: str | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="a shell command run in the step's vm after the agent's turn; "
        "the step (or race candidate) fails unless it exits 0",
    )
    race: list[RaceCandidate] | None = Field(
        None,
        min_length=2,
        max_length=MAX_RACE,
        description="2-8 candidates run side by side, each in a fork of the step's vm; "
        "the first whose turn ends well and whose check passes wins",
    )


class WorkflowDefinition(_Model):
    """A named, versioned DAG of agent steps with typed params."""

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(1, ge=1)
    description: str = Field("", max_length=10_000)
    params: list[ParamDef] = Field(default_factory=list, max_length=MAX_PARAMS)
    steps: list[StepDef] = Field(min_length=1, max_length=MAX_STEPS)
    max_concurrency: int = Field(4, ge=1, le=64)


NotCondition.model_rebuild()
AllCondition.model_rebuild()
AnyCondition.model_rebuild()
StepDef.model_rebuild()
WorkflowDefinition.model_rebuild()


def _strip_tags(loc: tuple[int | str, ...]) -> list[int | str]:
    """Drop the union tags pydantic puts in a condition's error location."""
    out: list[int | str] = []
    expect_tag = False
    for part in loc:
        if expect_tag and part in _CONDITION_TAGS:
            expect_tag = False
            continue
        out.append(part)
        expect_tag = part in ("when", "not") or (
            isinstance(part, int) and len(out) >= 2 and out[-2] in ("all", "any")
        )
    return out


def invalid_from(err: ValidationError) -> InvalidRequest:
    """The first pydantic error as an ``InvalidRequest`` naming its field."""
    first = err.errors()[0]
    # An empty location: the document itself (not JSON, not an object).
    where = ".".join(str(p) for p in _strip_tags(first["loc"])) or "definition"
    return InvalidRequest(f"{where}: {first['msg']}", field=where, errors=len(err.errors()))


def load_definition(data: Any) -> WorkflowDefinition:
    """Parse and fully validate a definition (a dict or a JSON string)."""
    from .validate import validate_definition

    try:
        if isinstance(data, str | bytes):
            defn = WorkflowDefinition.model_validate_json(data)
        else:
            defn = WorkflowDefinition.model_validate(data)
    except ValidationError as err:
        raise invalid_from(err) from None
    validate_definition(defn)
    return defn
