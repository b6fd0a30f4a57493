"""DAG workflow definitions (models, JSON Schema, builder, validation, templates)
and their executor (``executor.execute``: a durable run of a definition; the
``workflows`` actor in ``orchestrator.builtin`` serves it)."""

from .builder import WorkflowBuilder, define
from .definition import (
    Condition,
    ParamDef,
    RaceCandidate,
    StepDef,
    WorkflowDefinition,
    load_definition,
)
from .executor import RunOptions, WorkflowFailed, WorkflowNotFound, execute
from .interpolate import Reference, references, render
from .results import workflow_view
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
    "RaceCandidate",
    "Reference",
    "RunOptions",
    "StepDef",
    "WorkflowBuilder",
    "WorkflowDefinition",
    "WorkflowFailed",
    "WorkflowNotFound",
    "ancestors",
    "bind_params",
    "define",
    "dependents",
    "evaluate",
    "execute",
    "levels",
    "load_definition",
    "references",
    "render",
    "validate_definition",
    "workflow_view",
]
