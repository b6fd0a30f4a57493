"""DAG workflow definitions: models, JSON Schema, builder, validation, templates.

The executor (durable runs of a definition) is the next part of issue 11.
"""

from .builder import WorkflowBuilder, define
from .definition import (
    Condition,
    ParamDef,
    StepDef,
    WorkflowDefinition,
    load_definition,
)
from .interpolate import Reference, references, render
from .validate import (
    ancestors,
    bind_params,
    dependents,
    evaluate,
    levels,
    validate_definition,
)

__all__ = [
    "Condition",
    "ParamDef",
    "Reference",
    "StepDef",
    "WorkflowBuilder",
    "WorkflowDefinition",
    "ancestors",
    "bind_params",
    "define",
    "dependents",
    "evaluate",
    "levels",
    "load_definition",
    "references",
    "render",
    "validate_definition",
]
