"""Checks a definition before anything runs; the graph helpers an executor needs;
params binding; evaluating ``when`` conditions.

Every error is an ``InvalidRequest`` whose ``field`` metadata names the place
(``steps.2.depends_on.0``, ``params.repo``), so HTTP answers a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.errors import InvalidRequest

from .definition import (
    AllCondition,
    Condition,
    NotCondition,
    ParamCondition,
    ParamDef,
    StepCondition,
    WorkflowDefinition,
)
from .interpolate import references


def _fail(field: str, message: str, **extra: Any) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", field=field, **extra)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, dict)


def _graph(defn: WorkflowDefinition) -> dict[str, list[str]]:
    return {s.id: list(s.depends_on) for s in defn.steps}


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle as ``[a, b, ..., a]`` or None; iterative (no recursion limit)."""
    color: dict[str, int] = {}
    for root in graph:
        if color.get(root):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        path = [root]
        color[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                color[node] = 2
            elif color.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not color.get(child):
                color[child] = 1
                path.append(child)
                stack.append((child, iter(graph[child])))
    return None


def ancestors(defn: WorkflowDefinition, step_id: str) -> set[str]:
    """Every step ``step_id`` depends on, directly or transitively."""
    graph = _graph(defn)
    seen: set[str] = set()
    todo = list(graph.get(step_id, []))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, []))
    return seen


def _all_ancestors(defn: WorkflowDefinition) -> dict[str, set[str]]:
    """Every step's ancestors in one pass over the levels (an acyclic definition)."""
    by_id = {s.id: s for s in defn.steps}
    out: dict[str, set[str]] = {}
    for level in levels(defn):
        for sid in level:
            acc: set[str] = set()
            for dep in by_id[sid].depends_on:
                acc.add(dep)
                acc |= out[dep]
            out[sid] = acc
    return out


def dependents(defn: WorkflowDefinition, step_id: str) -> list[str]:
    """Every step depending on ``step_id`` (transitively), in definition order."""
    return [s.id for s in defn.steps if step_id in ancestors(defn, s.id)]


def levels(defn: WorkflowDefinition) -> list[list[str]]:
    """Topological levels: each step is one level after its deepest dependency."""
    depth: dict[str, int] = {}
    graph = _graph(defn)
    remaining = [s.id for s in defn.steps]
    while remaining:  # a validated definition is acyclic: every pass places one
        placed = [n for n in remaining if all(d in depth for d in graph[n])]
        if not placed:
            raise InvalidRequest("steps: the dependencies form a cycle", field="steps")
        for n in placed:
            depth[n] = 1 + max((depth[d] for d in graph[n]), default=-1)
        remaining = [n for n in remaining if n not in depth]
    out: list[list[str]] = [[] for _ in range(1 + max(depth.values()))]
    for s in defn.steps:
        out[depth[s.id]].append(s.id)
    return out


def _check_condition(
    cond: Condition, field: str, params: set[str], before: set[str], step: str
) -> None:
    if isinstance(cond, ParamCondition):
        if cond.param not in params:
            raise _fail(f"{field}.param", f"step {step!r}: unknown param {cond.param!r}")
    elif isinstance(cond, StepCondition):
        if cond.step not in before:
            raise _fail(
                f"{field}.step",
                f"step {step!r}: {cond.step!r} is not one of its (transitive) dependencies",
            )
    elif isinstance(cond, NotCondition):
        _check_condition(cond.not_, f"{field}.not", params, before, step)
    else:
        items = cond.all if isinstance(cond, AllCondition) else cond.any
        key = "all" if isinstance(cond, AllCondition) else "any"
        for i, sub in enumerate(items):
            _check_condition(sub, f"{field}.{key}.{i}", params, before, step)


def validate_definition(defn: WorkflowDefinition) -> None:
    """Raise ``InvalidRequest`` naming the field for the first problem found."""
    names: set[str] = set()
    for i, p in enumerate(defn.params):
        if p.name in names:
            raise _fail(f"params.{i}.name", f"duplicate param {p.name!r}")
        names.add(p.name)
        if p.default is not None and not _type_ok(p.type, p.default):
            raise _fail(f"params.{i}.default", f"param {p.name!r}: default is not a {p.type}")
    ids: set[str] = set()
    for i, s in enumerate(defn.steps):
        if s.id in ids:
            raise _fail(f"steps.{i}.id", f"duplicate step id {s.id!r}")
        ids.add(s.id)
    for i, s in enumerate(defn.steps):
        for j, dep in enumerate(s.depends_on):
            if dep not in ids:
                raise _fail(f"steps.{i}.depends_on.{j}", f"step {s.id!r}: no step {dep!r}")
        if len(set(s.depends_on)) != len(s.depends_on):
            raise _fail(f"steps.{i}.depends_on", f"step {s.id!r}: a dependency is repeated")
    cycle = _find_cycle(_graph(defn))
    if cycle:
        raise _fail("steps", "the dependencies form a cycle: " + " -> ".join(cycle), cycle=cycle)
    all_before = _all_ancestors(defn)
    for i, s in enumerate(defn.steps):
        before = all_before[s.id]
        templates = [(f"steps.{i}.{a}", getattr(s, a)) for a in ("prompt", "system_prompt")]
        for j, cand in enumerate(s.race or []):
            for a in ("prompt", "system_prompt"):
                templates.append((f"steps.{i}.race.{j}.{a}", getattr(cand, a)))
        for field, template in templates:
            if template is None:
                continue
            try:
                refs = references(template)
            except InvalidRequest as err:
                raise _fail(field, f"step {s.id!r}: {err.message}", step=s.id) from None
            for ref in refs:
                if ref.kind == "param" and ref.name not in names:
                    raise _fail(
                        field,
                        f"step {s.id!r}: unknown param in {{{{{ref}}}}}",
                        step=s.id,
                        reference=str(ref),
                    )
                if ref.kind == "step" and ref.name not in before:
                    raise _fail(
                        field,
                        f"step {s.id!r}: {{{{{ref}}}}} refers to {ref.name!r}, "
                        "which is not one of its (transitive) dependencies",
                        step=s.id,
                        reference=str(ref),
                    )
        if s.when is not None:
            _check_condition(s.when, f"steps.{i}.when", names, before, s.id)


def bind_params(defn: WorkflowDefinition, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's params: ``given`` type-checked, defaults applied (unset optional: None)."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise InvalidRequest("params: an object of param values", field="params")
    declared: dict[str, ParamDef] = {p.name: p for p in defn.params}
    for name in given:
        if name not in declared:
            raise _fail(f"params.{name}", f"unknown param (declared: {sorted(declared)})")
    bound: dict[str, Any] = {}
    for p in defn.params:
        if p.name in given and given[p.name] is not None:
            value = given[p.name]
            if not _type_ok(p.type, value):
                raise _fail(f"params.{p.name}", f"expected a {p.type}, got {type(value).__name__}")
            bound[p.name] = value
        elif p.required:
            raise _fail(f"params.{p.name}", "required param is missing")
        else:
            bound[p.name] = p.default
    return bound


def evaluate(cond: Condition, params: Mapping[str, Any], statuses: Mapping[str, str]) -> bool:
    """Whether ``cond`` holds given bound params and finished steps' statuses."""
    if isinstance(cond, ParamCondition):
        value = params.get(cond.param)
        if cond.equals is None:
            return bool(value)
        # True must not equal 1: compare booleans only with booleans.
        same_kind = isinstance(value, bool) == isinstance(cond.equals, bool)
        return bool(same_kind and value == cond.equals)
    if isinstance(cond, StepCondition):
        return statuses.get(cond.step) == cond.status
    if isinstance(cond, NotCondition):
        return not evaluate(cond.not_, params, statuses)
    if isinstance(cond, AllCondition):
        return all(evaluate(c, params, statuses) for c in cond.all)
    return any(evaluate(c, params, statuses) for c in cond.any)
