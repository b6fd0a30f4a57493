"""The built-in orchestrator actors. They reach vms by the actor name ``vm``
through the client, never by importing the host."""

from __future__ import annotations

from ..definitions import ActorDefinition
from ._agent import MAX_AGENT_FILE, REPO_DIR, put_repo, read_capped, run_agent_task, vm_input_for
from ._repo import HOW_TO_ALLOW, RepoPolicy, RepoRequest, is_blob, is_remote
from .automator import FixBugRequest, automator
from .issue_worker import issue_worker
from .pipeline import CodeReviewRequest, pipeline
from .reviewer import reviewer
from .task_runner import task_runner


def builtin_orchestrators(policy: RepoPolicy | None = None) -> dict[str, ActorDefinition]:
    """Name → definition, ready for ``setup(use={..., **builtin_orchestrators()})``.
    ``policy`` says which host directories a request's ``repo`` may name (default:
    none — a caller sends a URL or uploads a bundle)."""
    return {
        "automator": automator(policy),
        "pipeline": pipeline(policy),
        "taskRunner": task_runner(),
        "reviewer": reviewer(),
        "issueWorker": issue_worker(),
    }


__all__ = [
    "HOW_TO_ALLOW",
    "MAX_AGENT_FILE",
    "REPO_DIR",
    "CodeReviewRequest",
    "FixBugRequest",
    "RepoPolicy",
    "RepoRequest",
    "automator",
    "builtin_orchestrators",
    "is_blob",
    "is_remote",
    "issue_worker",
    "pipeline",
    "put_repo",
    "read_capped",
    "reviewer",
    "run_agent_task",
    "task_runner",
    "vm_input_for",
]
