"""Typed errors raised by the actor runtime and the workflow engine.

Every error has a stable ``group`` and ``code`` so that the HTTP layer can turn it
into ``{"error": {"group", "code", "message", "metadata"}}`` without guessing.
"""

from __future__ import annotations

from typing import Any


class AgentVMError(Exception):
    """Base class of every error the engine raises on purpose."""

    group = "engine"
    code = "error"
    http_status = 500

    def __init__(self, message: str, **metadata: Any) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "code": self.code,
            "message": self.message,
            "metadata": self.metadata,
        }


# --- caller mistakes -------------------------------------------------------------


class InvalidRequest(AgentVMError):
    """Bad input from a caller (a malformed key, a wrong type, ...)."""

    group = "request"
    code = "invalid"
    http_status = 400


class ActorNotFound(AgentVMError):
    group = "actor"
    code = "not_found"
    http_status = 404


class ActorAlreadyExists(AgentVMError):
    group = "actor"
    code = "already_exists"
    http_status = 409


class UnknownActorType(AgentVMError):
    group = "actor"
    code = "unknown_type"
    http_status = 404


class ActionNotFound(AgentVMError):
    group = "action"
    code = "not_found"
    http_status = 404


class QueueNotFound(AgentVMError):
    group = "queue"
    code = "not_found"
    http_status = 404


class QueueFull(AgentVMError):
    group = "queue"
    code = "full"
    http_status = 429


class StorageFull(AgentVMError):
    """The database's disk is full: nothing of the call was written; retry once space
    returns (the engine keeps running, no restart needed)."""

    group = "storage"
    code = "full"
    http_status = 507


class MessageTooLarge(AgentVMError):
    group = "queue"
    code = "message_too_large"
    http_status = 413


class NotSerializable(AgentVMError):
    """A value that must be stored (state, step output, message body) is not JSON."""

    group = "serialization"
    code = "not_json"
    http_status = 400


class EventNotDeclared(AgentVMError):
    group = "event"
    code = "not_declared"
    http_status = 400


class MessageNotCompletable(AgentVMError):
    group = "queue"
    code = "not_completable"
    http_status = 400


# --- workflow outcomes -----------------------------------------------------------


class WorkflowError(AgentVMError):
    group = "workflow"
    code = "error"


class HistoryDivergedError(WorkflowError):
    """Replay met history that the workflow code no longer produces."""

    code = "history_diverged"


class StepExhaustedError(WorkflowError):
    """A step failed on every attempt it was allowed."""

    code = "step_exhausted"


class StepTimeoutError(WorkflowError):
    """One attempt of a step ran longer than its ``timeout``."""

    code = "step_timeout"


class JoinError(WorkflowError):
    """One or more branches of a ``ctx.join`` failed; ``errors`` maps branch → error."""

    code = "join_failed"

    def __init__(self, message: str, errors: dict[str, BaseException]) -> None:
        super().__init__(message, branches={k: repr(v) for k, v in errors.items()})
        self.errors = errors


class RaceError(WorkflowError):
    """Every branch of a ``ctx.race`` failed."""

    code = "race_failed"

    def __init__(self, message: str, errors: dict[str, BaseException]) -> None:
        super().__init__(message, branches={k: repr(v) for k, v in errors.items()})
        self.errors = errors


class CriticalError(Exception):
    """Raise inside a step to fail it at once: a critical error is never retried.

    Users raise it (or subclass it) themselves, so it takes a plain message.
    """


class ActorDestroyed(AgentVMError):
    group = "actor"
    code = "destroyed"
    http_status = 410


class SubscriberTooSlow(AgentVMError):
    """A broadcast subscriber fell further behind than its buffer allows and was dropped."""

    group = "events"
    code = "subscriber_too_slow"
    http_status = 429


class EngineStopped(AgentVMError):
    group = "engine"
    code = "stopped"
    http_status = 503


# --- runs -----------------------------------------------------------------------------


class RunNotFound(AgentVMError):
    group = "run"
    code = "not_found"
    http_status = 404


class RunNotCancellable(AgentVMError):
    """Only a queued or running run can be cancelled."""

    group = "run"
    code = "not_cancellable"
    http_status = 409


class RunNotRetryable(AgentVMError):
    """Only a failed or cancelled run can be retried."""

    group = "run"
    code = "not_retryable"
    http_status = 409


class RunFailed(AgentVMError):
    """``send(..., wait=True, raise_on_failure=True)``: the run failed; its stored error
    is ``metadata["error"]``."""

    group = "run"
    code = "failed"
    http_status = 409


class RunCancelled(AgentVMError):
    """``send(..., wait=True, raise_on_failure=True)``: the run was cancelled."""

    group = "run"
    code = "cancelled"
    http_status = 409


class WorkflowNotRecoverable(AgentVMError):
    """``recover_workflow`` on an actor whose main workflow has not failed, or
    ``cancel_workflow`` on one that is already finished."""

    group = "workflow"
    code = "not_recoverable"
    http_status = 409


# --- cluster (several hosts on one PostgreSQL) ----------------------------------------


class ClusterError(AgentVMError):
    group = "cluster"
    code = "error"
    http_status = 503


class LeaseLost(ClusterError):
    """This host no longer holds the actor's lease (another host took it over): the
    store refused the write, and nothing of it was applied."""

    code = "lease_lost"
    http_status = 409


class NotOwner(ClusterError):
    """Another live host owns the actor; the request belongs there (``owner_url``).
    Metadata: ``actor_id``, ``owner_host_id``, ``owner_url``."""

    code = "not_owner"
    http_status = 421
