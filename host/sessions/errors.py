"""Typed errors of the session manager (all :class:`AgentVMError`, group ``session``)."""

from __future__ import annotations

from orchestrator.errors import AgentVMError


class SessionError(AgentVMError):
    group = "session"
    code = "error"
    http_status = 500


class SessionNotFound(SessionError):
    code = "not_found"
    http_status = 404


class UnknownAgentType(SessionError):
    code = "unknown_agent_type"
    http_status = 400


class SessionBusy(SessionError):
    """A prompt is already running on the session."""

    code = "busy"
    http_status = 409


class SessionClosed(SessionError):
    code = "closed"
    http_status = 409


class PermissionNotFound(SessionError):
    code = "permission_not_found"
    http_status = 404


class AgentExited(SessionError):
    """The agent process is gone; ``metadata`` has ``exit_code`` and ``stderr_tail``."""

    code = "agent_exited"
    http_status = 502


class AgentStartFailed(SessionError):
    code = "agent_start_failed"
    http_status = 502


class AgentError(SessionError):
    """The agent answered a request with a JSON-RPC error."""

    code = "agent_error"
    http_status = 502


class TooManySessions(SessionError):
    """A session limit is reached; ``metadata.limit`` names it
    (``AGENTVM_MAX_SESSIONS_PER_VM`` or ``AGENTVM_MAX_SESSIONS``)."""

    code = "too_many_sessions"
    http_status = 429


class ResumeUnsupported(SessionError):
    """The session cannot be resumed or forked (its agent has neither ACP
    ``session/load`` nor agentvm's history hand-over), or it is still open."""

    code = "resume_unsupported"
    http_status = 409


class McpUnsupported(SessionError):
    """The agent does not support a kind of MCP server the caller passed."""

    code = "mcp_unsupported"
    http_status = 400
