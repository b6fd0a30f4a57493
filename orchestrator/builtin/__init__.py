"""The built-in orchestrator actors. They reach vms by the actor name ``vm``
through the client, never by importing the host."""

from __future__ import annotations

from ..definitions import ActorDefinition
from ._agent import REPO_DIR, put_repo, run_agent_task, vm_input_for
from .automator import FixBugRequest, automator
from .issue_worker import issue_worker
from .pipeline import CodeReviewRequest, pipeline
from .reviewer import reviewer
from .task_runner import task_runner


def builtin_orchestrators() -> dict[str, ActorDefinition]:
    """Name → definition, ready for ``setup(use={..., **builtin_orchestrators()})``."""
    return {
        "automator": automator(),
        "pipeline": pipeline(),
        "taskRunner": task_runner(),
        "reviewer": reviewer(),
        "issueWorker": issue_worker(),
    }


__all__ = [
    "REPO_DIR",
    "CodeReviewRequest",
    "FixBugRequest",
    "automator",
    "builtin_orchestrators",
    "issue_worker",
    "pipeline",
    "put_repo",
    "reviewer",
    "run_agent_task",
    "task_runner",
    "vm_input_for",
]
