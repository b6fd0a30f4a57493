"""Prompt templates: ``{{params.x}}``, ``{{steps.<id>.text}}``,
``{{steps.<id>.tool_calls}}`` and ``{{steps.<id>.files.<path>}}``; nothing else.

Rendering is one pass over the template: text substituted in (an agent's answer,
a file from the vm) is never scanned again, so a step cannot smuggle a
``{{params.secret}}`` reference into a later prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.errors import InvalidRequest

from .definition import NAME_PATTERN

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = NAME_PATTERN.strip("^$")
_PARAM = re.compile(rf"params\.({_NAME})")
_STEP = re.compile(rf"steps\.({_NAME})\.(text|tool_calls)")
_FILE = re.compile(rf"steps\.({_NAME})\.files\.(/?[^\s{{}}]+)")

FetchFile = Callable[[str, str], Awaitable[str]]
"""``fetch(step_id, path) -> text``: a file the step left in its vm (the executor's)."""


@dataclass(frozen=True)
class Reference:
    """One ``{{...}}`` of a template."""

    kind: Literal["param", "step"]
    name: str
    field: Literal["value", "text", "tool_calls", "file"] = "value"
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "param":
            return f"params.{self.name}"
        if self.field == "file":
            return f"steps.{self.name}.files.{self.path}"
        return f"steps.{self.name}.{self.field}"


def parse_reference(expr: str) -> Reference:
    """The reference inside one pair of braces (surrounding whitespace allowed)."""
    text = expr.strip()
    if m := _PARAM.fullmatch(text):
        return Reference("param", m.group(1))
    if m := _STEP.fullmatch(text):
        return Reference("step", m.group(1), m.group(2))  # type: ignore[arg-type]
    if m := _FILE.fullmatch(text):
        path = m.group(2)
        if ".." in path.split("/"):
            raise InvalidRequest(f"{{{{{text}}}}}: a file path has no '..'", reference=text)
        return Reference("step", m.group(1), "file", path)
    raise InvalidRequest(
        f"{{{{{text}}}}} is not a reference: use params.<name>, steps.<id>.text, "
        "steps.<id>.tool_calls or steps.<id>.files.<path>",
        reference=text,
    )


def references(template: str) -> list[Reference]:
    """Every reference of ``template``, in order (raises on an unknown syntax)."""
    return [parse_reference(m.group(1)) for m in _PLACEHOLDER.finditer(template)]


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


async def render(
    template: str,
    *,
    params: Mapping[str, Any],
    steps: Mapping[str, Mapping[str, Any]],
    fetch_file: FetchFile | None = None,
) -> str:
    """``template`` with every reference replaced.

    ``steps`` maps a finished step's id to its result (``text``, ``tool_calls``);
    file references call ``fetch_file``. A reference to a step with no result
    (skipped) renders as an empty string.
    """
    matches = list(_PLACEHOLDER.finditer(template))
    values: list[str] = []
    for m in matches:
        ref = parse_reference(m.group(1))
        if ref.kind == "param":
            if ref.name not in params:
                raise InvalidRequest(f"unknown param in template: {ref}", reference=str(ref))
            values.append(_as_text(params[ref.name]))
            continue
        result = steps.get(ref.name)
        if ref.field == "file":
            if result is None:
                values.append("")
                continue
            if fetch_file is None:
                raise InvalidRequest(f"{ref}: no vm to read the file from", reference=str(ref))
            assert ref.path is not None
            values.append(await fetch_file(ref.name, ref.path))
        elif ref.field == "tool_calls":
            calls = result.get("tool_calls") if result else None
            values.append(json.dumps(calls or [], ensure_ascii=False))
        else:
            values.append(_as_text(result.get("text")) if result else "")
    parts: list[str] = []
    last = 0
    for m, value in zip(matches, values, strict=True):
        parts.append(template[last : m.start()])
        parts.append(value)
        last = m.end()
    parts.append(template[last:])
    return "".join(parts)
