"""Wire and result models of sessions."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

PermissionPolicy = Literal["allow", "ask"]
PermissionReply = Literal["once", "always", "reject"]
SessionStatus = Literal["starting", "ready", "prompting", "closed", "exited"]
EventKind = Literal[
    "update",  # an ACP session/update (data = the update object)
    "prompt",  # send_prompt started (data = {text})
    "prompt_end",  # the agent answered a prompt (data = {stop_reason, usage?})
    "permission_request",  # policy ask: waits for respond_permission (data: permission_id, ...)
    "permission_response",  # how a permission request was answered
    "agent_exit",  # the agent process ended (data = {exit_code, stderr_tail, reason})
    "session_closed",
    "protocol_error",  # an agent line the host dropped (data = {error, ...}; limits.py)
    "events_dropped",  # events not stored (data = {count, bytes, reason, total})
    "history",  # a resumed/forked session's earlier conversation (data = {messages, from})
    "transcript",  # compacted turns of a closed session (data = {messages, turns})
]


class SessionInfo(BaseModel):
    """What ``create_session`` returns."""

    session_id: str
    agent_type: str
    capabilities: dict[str, Any] = Field(default_factory=dict)
    agent_info: dict[str, Any] | None = None
    resumed_from: str | None = None
    forked_from: str | None = None


class PromptResult(BaseModel):
    stop_reason: str
    text: str
    usage: dict[str, Any] | None = None


class SessionEvent(BaseModel):
    """One numbered entry of a session's event log."""

    session_id: str
    seq: int = 0  # assigned by the store (1, 2, ...)
    kind: EventKind
    data: dict[str, Any] = Field(default_factory=dict)
    # Agent stdout offset just past the line this event came from (re-attach dedupe).
    offset: int | None = None
    at: float = Field(default_factory=time.time)


class SessionRecord(BaseModel):
    """Everything needed to re-attach to a running session after a host restart.

    Store it (e.g. in the vm actor's state) when ``create_session`` returns; pass it
    to :meth:`SessionManager.reattach` on the next start."""

    session_id: str
    agent_type: str
    pid: int
    acp_session_id: str
    cwd: str
    permission_policy: PermissionPolicy = "allow"
    generation: int = 0
    capabilities: dict[str, Any] = Field(default_factory=dict)
    agent_info: dict[str, Any] | None = None
    # SessionOptions (options.py) it was created with: a resume/fork reuses them.
    options: dict[str, Any] = Field(default_factory=dict)
    resumed_from: str | None = None
    forked_from: str | None = None


class SessionStats(BaseModel):
    """``session_stats()``: sessions of one vm (or summed over the host)."""

    open: int = 0
    prompting: int = 0
    idle: int = 0
    tokens: int = 0
    limit: int | None = None  # the most open sessions allowed


class SessionSummary(BaseModel):
    """One row of ``list_sessions``."""

    session_id: str
    agent_type: str
    status: SessionStatus
    pid: int
    cwd: str
    permission_policy: PermissionPolicy
    pending_permissions: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    created_at: float
    last_active: float | None = None
    tokens: int = 0
    resumed_from: str | None = None
    forked_from: str | None = None
