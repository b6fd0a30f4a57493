"""Pydantic models of every request and response body the server speaks.

Values typed ``Any`` are JSON in which bytes travel as ``{"$bytes": "<base64>"}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from orchestrator.engine import ActorInfo, HistoryEntry, QueuedMessage, WorkflowHistory
from orchestrator.records import RunDetail, RunInfo

__all__ = [
    "ActionRequest",
    "ActionResponse",
    "ActorInfo",
    "ActorList",
    "ActorRef",
    "ActorSummary",
    "CreateActorRequest",
    "DestroyResponse",
    "ErrorBody",
    "ErrorDetail",
    "FileListing",
    "FileWritten",
    "Health",
    "HistoryEntry",
    "QueueContents",
    "QueuedMessage",
    "RunDetail",
    "RunInfo",
    "RunList",
    "SendRequest",
    "SendResponse",
    "StateResponse",
    "WorkflowHistory",
]


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema means it: ``5`` or ``5.0``; not ``"5"`` nor ``true``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("Input should be a valid integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    group: str = Field(description="error family, e.g. 'actor', 'queue', 'request'")
    code: str = Field(description="stable code within the group, e.g. 'not_found'")
    message: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


class CreateActorRequest(_Request):
    input: Any = Field(None, description="create input, passed to create_state/on_create")


class ActorRef(BaseModel):
    actor_id: str
    name: str
    key: list[str]
    created: bool = Field(description="true if this request created the actor")


class ActorList(BaseModel):
    actors: list[ActorInfo]


class ActionRequest(_Request):
    args: list[Any] = Field(default_factory=list, description="positional arguments")


class ActionResponse(BaseModel):
    output: Any = None


class SendRequest(_Request):
    body: Any = None
    wait: StrictBool = Field(False, description="wait for the consumer to complete the message")
    timeout_ms: JsonInt | None = Field(
        None,
        ge=0,
        le=86_400_000,
        description="with wait: give up after this long (status 'timed_out'); "
        "default and cap: the server's AGENTVM_MAX_WAIT_MS",
    )


class SendResponse(BaseModel):
    status: Literal["queued", "completed", "failed", "cancelled", "timed_out"] = Field(
        description="with wait: completed, failed or cancelled (a run), or timed_out "
        "(only the wait ran out)"
    )
    message_id: int | None = Field(None, description="also the run id on a run queue")
    response: Any = Field(None, description="the consumer's response (status 'completed')")
    error: ErrorDetail | None = Field(None, description="why the run failed (status 'failed')")


class RunList(BaseModel):
    runs: list[RunInfo]


class StateResponse(BaseModel):
    state: Any


class QueueContents(BaseModel):
    messages: list[QueuedMessage]


class ActorSummary(BaseModel):
    actor_id: str
    name: str
    key: list[str]
    created_at: float
    awake: bool
    subscribers: int
    is_workflow: bool
    workflow_status: str | None = None
    queue_pending: int
    queue_in_flight: int
    history_entries: int
    entries_by_status: dict[str, int]
    running_steps: list[str]


class DestroyResponse(BaseModel):
    actor_id: str
    destroyed: bool = True


class FileListing(BaseModel):
    path: str
    entries: Any = Field(description="what the vm's readdir returned")


class FileWritten(BaseModel):
    path: str
    size: int


class Health(BaseModel):
    status: Literal["ok", "stopping"]
    version: str
    uptime_s: float
    actors_awake: int
