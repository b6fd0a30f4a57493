"""The session manager: ACP sessions with agents running in one sandbox.

Typical use (the vm actor)::

    sessions = SessionManager(sandbox, store=ActorLogEventStore(c))
    info = await sessions.create_session("coding-agent", cwd="/home/user/repo")
    result = await sessions.send_prompt(info.session_id, "fix the failing test")
    await sessions.close_session(info.session_id)

See docs/sessions.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import secrets
from collections.abc import Mapping
from typing import Any

from acp import PROTOCOL_VERSION, RequestError, text_block
from acp.schema import ClientCapabilities, FileSystemCapabilities, Implementation

from host.gateway import PLACEHOLDER_KEY
from host.sandbox import ProcessNotFound, Sandbox, SandboxError

from .agents import AgentOverrides, resolve_agent
from .errors import AgentError, AgentStartFailed, SessionBusy, SessionNotFound
from .events import EventStore, MemoryEventStore
from .models import (
    PermissionPolicy,
    PermissionReply,
    PromptResult,
    SessionEvent,
    SessionInfo,
    SessionRecord,
    SessionSummary,
)
from .session import Session

log = logging.getLogger("agentvm.sessions")

HOME = "/home/user"
CLIENT_INFO = Implementation(name="agentvm", title="agentvm host", version="0.1.0")


def _dump(model: Any) -> dict[str, Any]:
    if model is None:
        return {}
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


class SessionManager:
    """ACP client side for the agents of one sandbox.

    ``store`` receives every event, numbered (default: in memory);
    ``agents`` adds or overrides agent types (type -> argv);
    ``host_api_key`` is the host's key (default ``$ANTHROPIC_API_KEY``): a caller who
    passes that same key in ``env`` gets the gateway placeholder instead, so the key
    never enters the sandbox.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        store: EventStore | None = None,
        agents: AgentOverrides | None = None,
        host_api_key: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.sandbox = sandbox
        self.store: EventStore = store if store is not None else MemoryEventStore()
        self.agents = agents
        self.host_api_key = (
            host_api_key if host_api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        )
        self.start_timeout = start_timeout
        self.sessions: dict[str, Session] = {}

    # -- helpers -------------------------------------------------------------------

    def _get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r}", session_id=session_id)
        return session

    def _agent_env(self, caller: Mapping[str, str] | None) -> dict[str, str]:
        env = {str(k): str(v) for k, v in (caller or {}).items()}
        key = env.get("ANTHROPIC_API_KEY")
        if key is not None and (not key or key == self.host_api_key):
            # The host's own key: the gateway injects it, the sandbox never sees it.
            env["ANTHROPIC_API_KEY"] = PLACEHOLDER_KEY
        env.setdefault("ANTHROPIC_API_KEY", PLACEHOLDER_KEY)
        return env

    async def _call(self, session: Session, coro: Any, what: str) -> Any:
        """Await an ACP request; the agent dying or erring becomes a typed error."""
        try:
            return await coro
        except RequestError as exc:
            raise AgentError(
                f"agent of session {session.id} failed {what}: {exc}",
                session_id=session.id,
                code=exc.code,
                data=exc.data,
            ) from exc
        except ConnectionError as exc:
            await _settle(session)
            if session.status in ("exited", "closed"):
                session.check_usable()
            raise AgentError(f"{what} failed: {exc}", session_id=session.id) from exc

    # -- API -----------------------------------------------------------------------

    async def create_session(
        self,
        agent_type: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        model: str | None = None,
        additional_instructions: str | None = None,
        system_prompt: str | None = None,
        permission_policy: PermissionPolicy = "allow",
    ) -> SessionInfo:
        """Start the agent in the sandbox and run ACP ``initialize`` + ``session/new``."""
        agent = resolve_agent(agent_type, self.agents)
        session_id = "s-" + secrets.token_hex(8)
        workdir = posixpath.normpath(posixpath.join(HOME, cwd or "."))
        agentvm_meta: dict[str, Any] = {
            "sessionId": session_id,
            "permissionMode": permission_policy,
        }
        proc_env = {**agent.env, **self._agent_env(env), "AGENTVM_SESSION_ID": session_id}
        proc_env["AGENTVM_PERMISSION_MODE"] = permission_policy
        if model:
            agentvm_meta["model"] = proc_env["AGENTVM_MODEL"] = model
        if additional_instructions:
            agentvm_meta["instructions"] = proc_env["AGENTVM_INSTRUCTIONS"] = (
                additional_instructions
            )
        if system_prompt:
            agentvm_meta["systemPrompt"] = system_prompt
        try:
            await self.sandbox.mkdir(workdir)  # the session's cwd exists from the start
            handle = await self.sandbox.spawn(
                agent.command, cwd=workdir, env=proc_env, retain_output=True
            )
        except SandboxError as exc:
            raise AgentStartFailed(
                f"cannot start agent {agent_type!r} ({' '.join(agent.command)}): {exc}",
                agent_type=agent_type,
            ) from exc
        record = SessionRecord(
            session_id=session_id,
            agent_type=agent_type,
            pid=handle.pid,
            acp_session_id="",
            cwd=workdir,
            permission_policy=permission_policy,
        )
        session = Session(self, record)
        conn = session.start(handle)
        self.sessions[session_id] = session
        try:
            async with asyncio.timeout(self.start_timeout):
                init = await conn.initialize(
                    protocol_version=PROTOCOL_VERSION,
                    client_capabilities=ClientCapabilities(
                        fs=FileSystemCapabilities(read_text_file=True, write_text_file=True),
                        terminal=True,
                    ),
                    client_info=CLIENT_INFO,
                )
                new = await conn.new_session(cwd=workdir, mcp_servers=[], agentvm=agentvm_meta)
        except BaseException as exc:
            await self._abandon(session)
            if isinstance(exc, asyncio.CancelledError):
                raise
            detail = (
                "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            )
            err = session.exit_error() if session.status == "exited" else None
            message = f"agent {agent_type!r} did not start a session: {detail}"
            if err is not None:
                message = f"{message}; {err.message}"
            raise AgentStartFailed(
                message,
                agent_type=agent_type,
                exit_code=session.exit_code,
                stderr_tail=err.metadata.get("stderr_tail") if err else None,
            ) from None
        record.acp_session_id = new.session_id
        record.capabilities = _dump(init.agent_capabilities)
        record.agent_info = _dump(init.agent_info) or None
        session.status = "ready"
        return SessionInfo(
            session_id=session_id,
            agent_type=agent_type,
            capabilities=record.capabilities,
            agent_info=record.agent_info,
        )

    async def _abandon(self, session: Session) -> None:
        session.closing = True
        with contextlib.suppress(SandboxError):
            await self.sandbox.kill_process(session.record.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await session.exited.wait()
        await session.detach()
        self.sessions.pop(session.id, None)

    async def send_prompt(self, session_id: str, text: str) -> PromptResult:
        """Run one prompt turn; returns the stop reason and the agent's text."""
        session = self._get(session_id)
        session.check_usable()
        if session.prompt_lock.locked():
            raise SessionBusy(f"session {session_id} is already running a prompt")
        async with session.prompt_lock:
            assert session.conn is not None
            session.status = "prompting"
            session.text_parts = []
            await session.emit("prompt", {"text": text})
            try:
                response = await self._call(
                    session,
                    session.conn.prompt(
                        session_id=session.record.acp_session_id, prompt=[text_block(text)]
                    ),
                    "session/prompt",
                )
            finally:
                if session.status == "prompting":
                    session.status = "ready"
            usage = _dump(response.usage) or None
            return PromptResult(
                stop_reason=str(response.stop_reason),
                text="".join(session.text_parts),
                usage=usage,
            )

    async def cancel_prompt(self, session_id: str) -> None:
        """Ask the agent to stop the running turn (it answers ``cancelled``)."""
        session = self._get(session_id)
        session.check_usable()
        session.cancel_permissions()
        assert session.conn is not None
        await self._call(
            session,
            session.conn.cancel(session_id=session.record.acp_session_id),
            "session/cancel",
        )

    async def respond_permission(
        self, session_id: str, permission_id: str, reply: PermissionReply
    ) -> None:
        """Answer a ``permission_request`` event: ``once``, ``always`` or ``reject``."""
        if reply not in ("once", "always", "reject"):
            from orchestrator.errors import InvalidRequest

            raise InvalidRequest(f"reply must be once, always or reject, not {reply!r}")
        self._get(session_id).respond(permission_id, reply)

    async def close_session(self, session_id: str) -> None:
        """Stop the agent process (TERM, then KILL) and forget it; idempotent."""
        session = self._get(session_id)
        if session.status in ("closed", "exited"):
            if session.status == "exited":
                session.status = "closed"
            return
        session.closing = True
        session.cancel_permissions()
        pid = session.record.pid
        with contextlib.suppress(SandboxError):
            await self.sandbox.close_stdin(pid)
            await self.sandbox.kill_process(pid, "TERM")
        try:
            async with asyncio.timeout(3):
                await session.exited.wait()
        except TimeoutError:
            with contextlib.suppress(SandboxError):
                await self.sandbox.kill_process(pid, "KILL")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await session.exited.wait()
        session.status = "closed"
        await session.emit("session_closed", {"exit_code": session.exit_code})
        await session.detach()

    async def list_sessions(self) -> list[SessionSummary]:
        return [s.summary() for s in self.sessions.values()]

    async def get_session_events(self, session_id: str, since: int = 0) -> list[SessionEvent]:
        events = await self.store.read(session_id, since)
        if not events and session_id not in self.sessions:
            raise SessionNotFound(f"no session {session_id!r}", session_id=session_id)
        return events

    def record(self, session_id: str) -> SessionRecord:
        """What to keep (e.g. in actor state) to :meth:`reattach` after a host restart."""
        return self._get(session_id).record.model_copy(deep=True)

    def records(self) -> list[SessionRecord]:
        return [
            s.record.model_copy(deep=True)
            for s in self.sessions.values()
            if s.status not in ("closed", "exited")
        ]

    async def reattach(self, record: SessionRecord) -> SessionSummary:
        """Listen to a running session again (after a host restart). Output the agent
        wrote meanwhile is replayed; events already in the store are not repeated."""
        if record.session_id in self.sessions:
            return self.sessions[record.session_id].summary()
        stored = await self.store.read(record.session_id)
        last = max((e.offset or 0 for e in stored), default=0)
        session = Session(
            self, record.model_copy(update={"generation": record.generation + 1}), skip_until=last
        )
        self.sessions[record.session_id] = session
        try:
            handle = await self.sandbox.attach(record.pid, replace=True)
        except ProcessNotFound:
            session.status = "exited"
            session.exit_reason = "the agent process is gone (the sandbox restarted)"
            session.exited.set()
            if not any(e.kind in ("agent_exit", "session_closed") for e in stored):
                await session.emit("agent_exit", {"exit_code": None, "reason": session.exit_reason})
            return session.summary()
        session.start(handle)
        session.status = "ready"
        return session.summary()

    async def close(self) -> None:
        """Detach from every session (host shutting down); agents keep running."""
        for session in list(self.sessions.values()):
            await session.detach()
        self.sessions.clear()


async def _settle(session: Session) -> None:
    """After the connection dropped, give the exit a moment to be recorded."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await session.exited.wait()
