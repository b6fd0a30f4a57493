"""Agent sessions over ACP, host side (docs/sessions.md)."""

from .agents import AgentCommand, resolve_agent
from .errors import (
    AgentError,
    AgentExited,
    AgentStartFailed,
    PermissionNotFound,
    SessionBusy,
    SessionClosed,
    SessionError,
    SessionNotFound,
    UnknownAgentType,
)
from .events import ActorLogEventStore, EventStore, MemoryEventStore
from .limits import SessionLimits
from .manager import SessionManager
from .models import (
    PermissionPolicy,
    PermissionReply,
    PromptResult,
    SessionEvent,
    SessionInfo,
    SessionRecord,
    SessionSummary,
)

__all__ = [
    "ActorLogEventStore",
    "AgentCommand",
    "AgentError",
    "AgentExited",
    "AgentStartFailed",
    "EventStore",
    "MemoryEventStore",
    "PermissionNotFound",
    "PermissionPolicy",
    "PermissionReply",
    "PromptResult",
    "SessionBusy",
    "SessionClosed",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "SessionLimits",
    "SessionManager",
    "SessionNotFound",
    "SessionRecord",
    "SessionSummary",
    "UnknownAgentType",
    "resolve_agent",
]
