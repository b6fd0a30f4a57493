"""``define(name).param(...).step(...).build()``: a definition built in Python.

The builder only collects plain data and validates it exactly as a JSON
definition is validated, so both ways give equal ``WorkflowDefinition`` objects.
"""

from __future__ import annotations

from typing import Any

from .definition import WorkflowDefinition, load_definition


class WorkflowBuilder:
    """Collects params and steps; ``build()`` validates them."""

    def __init__(
        self, name: str, *, version: int = 1, description: str = "", max_concurrency: int = 4
    ) -> None:
        self._data: dict[str, Any] = {
            "name": name,
            "version": version,
            "description": description,
            "max_concurrency": max_concurrency,
            "params": [],
            "steps": [],
        }

    def param(
        self,
        name: str,
        type: str = "string",
        *,
        required: bool = False,
        default: Any = None,
        description: str = "",
    ) -> WorkflowBuilder:
        self._data["params"].append(
            {
                "name": name,
                "type": type,
                "required": required,
                "default": default,
                "description": description,
            }
        )
        return self

    def step(
        self, id: str, *, prompt: str, depends_on: list[str] | None = None, **options: Any
    ) -> WorkflowBuilder:
        """A step; ``options`` are the other ``StepDef`` fields (``when`` as a dict)."""
        self._data["steps"].append(
            {"id": id, "prompt": prompt, "depends_on": list(depends_on or []), **options}
        )
        return self

    def build(self) -> WorkflowDefinition:
        """The validated definition (``InvalidRequest`` naming the field otherwise)."""
        return load_definition(self._data)


def define(
    name: str, *, version: int = 1, description: str = "", max_concurrency: int = 4
) -> WorkflowBuilder:
    """Start building the workflow ``name``."""
    return WorkflowBuilder(
        name, version=version, description=description, max_concurrency=max_concurrency
    )
