"""The built-in orchestrator actors. They reach vms by the actor name ``vm``
through the client, never by importing the host."""

from __future__ import annotations

from ..definitions import ActorDefinition
from ._agent import (
    MAX_AGENT_FILE,
    REPO_DIR,
    AgentSession,
    put_repo,
    read_capped,
    run_agent_task,
    vm_input_for,
)
from ._findings import parse_findings
from ._repo import HOW_TO_ALLOW, RepoPolicy, RepoRequest, is_blob, is_remote
from ._runs import BUILTIN_CONCURRENCY, DEFAULT_KEEP_VM_HOURS, expire_vm, note_vm, release_vm
from .automator import FixBugRequest, automator
from .issue_worker import issue_worker
from .pipeline import CodeReviewRequest, pipeline
from .reviewer import reviewer
from .task_runner import task_runner
from .workflows import WorkflowRunRequest, workflows


def builtin_orchestrators(
    policy: RepoPolicy | None = None, *, keep_vm_hours: float = DEFAULT_KEEP_VM_HOURS
) -> dict[str, ActorDefinition]:
    """Name → definition, ready for ``setup(use={..., **builtin_orchestrators()})``.
    ``policy`` says which host directories a request's ``repo`` may name (default:
    none — a caller sends a URL or uploads a bundle); ``keep_vm_hours`` how long a
    vm kept with ``keep_vm`` lives. Every queue of them is a run queue."""
    return {
        "automator": automator(policy, keep_vm_hours=keep_vm_hours),
        "pipeline": pipeline(policy, keep_vm_hours=keep_vm_hours),
        "taskRunner": task_runner(),
        "reviewer": reviewer(),
        "issueWorker": issue_worker(),
        "workflows": workflows(policy, keep_vm_hours=keep_vm_hours),
    }


__all__ = [
    "BUILTIN_CONCURRENCY",
    "DEFAULT_KEEP_VM_HOURS",
    "HOW_TO_ALLOW",
    "MAX_AGENT_FILE",
    "REPO_DIR",
    "AgentSession",
    "CodeReviewRequest",
    "FixBugRequest",
    "RepoPolicy",
    "RepoRequest",
    "WorkflowRunRequest",
    "automator",
    "builtin_orchestrators",
    "expire_vm",
    "is_blob",
    "is_remote",
    "issue_worker",
    "note_vm",
    "parse_findings",
    "pipeline",
    "put_repo",
    "read_capped",
    "release_vm",
    "reviewer",
    "run_agent_task",
    "task_runner",
    "vm_input_for",
    "workflows",
]
