"""Agent sessions and the LLM gateway, as actions and hooks of the vm actor.

The vm actor keeps one :class:`~host.sessions.SessionManager` per live sandbox.
Every session update is stored in the actor's numbered log ``session:<id>`` and
broadcast as ``session_event``; a session's record sits in the actor state so a
host restart re-attaches to the agent process, which kept running. An open
session keeps the vm awake (its agent process runs in the container).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from host.gateway import LLMGateway, Usage
from host.sandbox import Sandbox, SandboxError
from host.sessions import (
    ActorLogEventStore,
    SessionEvent,
    SessionManager,
    SessionNotFound,
    SessionRecord,
)
from orchestrator import ActorContext
from orchestrator.errors import InvalidRequest

from .options import parse_call_options

if TYPE_CHECKING:
    from host.app import HostSettings

log = logging.getLogger("agentvm.vm.sessions")

SandboxOf = Callable[[ActorContext], Awaitable[Sandbox]]


def _settings() -> HostSettings:
    """The session settings (fields of HostSettings, read from ``AGENTVM_*``)."""
    from host.app import HostSettings

    return HostSettings()


def session_idle_timeout() -> float:
    """``AGENTVM_SESSION_IDLE_TIMEOUT``: a session with no prompt for this long is
    closed. It keeps its vm awake, and a session whose creating workflow step crashed
    (and was re-run after a restart) would otherwise be re-attached and held forever."""
    return _settings().session_idle_timeout


def prestart_setting() -> tuple[str, ...]:
    """``AGENTVM_PRESTART_AGENTS``: agent types kept pre-started in every live vm whose
    image carries them (they take their per-session settings from session/new
    _meta.agentvm). One makes create_session take milliseconds instead of ~0.5 s, at
    the cost of an idle agent process (~60-90 MB) per running vm; "" turns it off."""
    raw = _settings().prestart_agents
    return tuple(name.strip() for name in raw.split(",") if name.strip())


class CreateSessionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] | None = None
    cwd: str | None = None
    model: str | None = None
    additional_instructions: str | None = None
    system_prompt: str | None = None
    permission_policy: Literal["allow", "ask"] = "allow"


# get_session_events returns at most this many events (default / most a caller may
# ask for), and stops early past EVENTS_PAGE_BYTES (always at least one event).
EVENTS_PAGE = 1000
EVENTS_PAGE_MAX = 10000
EVENTS_PAGE_BYTES = 8 * 2**20


class EventsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: int = Field(0, ge=0)
    # One answer is bounded: page with since = the last seq returned.
    limit: int = Field(EVENTS_PAGE, ge=1, le=EVENTS_PAGE_MAX)


class _Holding(ActorLogEventStore):
    """The actor-log sink, which also lets the vm sleep once a session's agent is gone."""

    def __init__(self, c: ActorContext, holds: dict[str, Callable[[], None]]) -> None:
        super().__init__(c)
        self._holds = holds

    async def append(self, event: SessionEvent) -> int:
        seq = await super().append(event)
        if event.kind in ("agent_exit", "session_closed"):
            release = self._holds.pop(event.session_id, None)
            if release is not None:
                release()
        return seq


class SessionState:
    """Per-wake session bookkeeping, kept in the vm actor's vars."""

    def __init__(self) -> None:
        self.manager: SessionManager | None = None
        self.sandbox: Sandbox | None = None
        self.holds: dict[str, Callable[[], None]] = {}
        self.prestart: tuple[str, ...] = ()
        # session id -> when it was last created, prompted or answered (this wake).
        self.last_active: dict[str, float] = {}


async def arm_idle_check(c: ActorContext) -> None:
    """Make sure a ``close_idle_sessions`` call is scheduled while sessions exist."""
    if c.state.get("session_idle_check") is None and _records(c):
        c.state["session_idle_check"] = await c.schedule.after(
            session_idle_timeout() / 2, "close_idle_sessions"
        )


def _prestart_types(bundles: list[str]) -> tuple[str, ...]:
    """The pre-start agent types (see PRESTART_ENV) whose bundles the vm's image has."""
    from vm_images.agents import get_agent

    out = []
    for name in prestart_setting():
        try:
            spec = get_agent(name)
        except KeyError:
            continue
        if set(spec.bundles) <= set(bundles):
            out.append(name)
    return tuple(out)


def session_manager(c: ActorContext, s: SessionState, sandbox: Sandbox) -> SessionManager:
    """The vm's session manager for its live sandbox (a new one after a restart)."""
    if s.manager is None or s.sandbox is not sandbox:
        s.manager = SessionManager(
            sandbox,
            store=_Holding(c, s.holds),
            prestart=s.prestart,
            limits=_settings().session_limits(),
        )
        s.sandbox = sandbox
    return s.manager


async def sessions_up(
    c: ActorContext, s: SessionState, sandbox: Sandbox, bundles: list[str], *, adopted: bool
) -> None:
    """A sandbox went live: re-attach to running sessions (``adopted``: after a host
    restart) and pre-start agents for the next ``create_session``."""
    s.prestart = _prestart_types(bundles)
    if adopted:
        await reattach_sessions(c, s, sandbox)
        now = time.time()
        for sid in _records(c):
            s.last_active.setdefault(sid, now)
        await arm_idle_check(c)
    if not s.prestart:
        return
    sm = session_manager(c, s, sandbox)
    if adopted:
        try:  # strays of a host process that ended without stopping them
            await sm.kill_stale_prestarted()
        except SandboxError as exc:
            log.info("could not look for stale agents in vm %s: %s", list(c.key), exc)
    sm.warm_up()


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string", field=field)
    return value


def _records(c: ActorContext) -> dict[str, Any]:
    sessions: dict[str, Any] = c.state.setdefault("sessions", {})
    return sessions


async def gateway_up(
    c: ActorContext, gateway: LLMGateway | None, sandbox: Sandbox, budget: int | None
) -> None:
    """Serve the LLM gateway into a sandbox that just became live (created, started
    or adopted), restoring the usage recorded before a restart."""
    if gateway is None:
        return
    used = c.state.get("llm_usage")
    await gateway.serve(
        c.actor_id,
        sandbox.control.control_dir,
        container=sandbox.id,  # only this container's processes may connect
        budget_tokens=budget,
        used=Usage.model_validate(used) if used else None,
    )


async def gateway_down(c: ActorContext, gateway: LLMGateway | None, *, forget: bool) -> None:
    if gateway is None:
        return
    c.state["llm_usage"] = gateway.usage(c.actor_id).total.model_dump()
    await gateway.stop(c.actor_id, forget=forget)


def session_actions(
    st: Callable[[ActorContext], SessionState],
    sandbox_of: SandboxOf,
    gateway: LLMGateway | None,
) -> dict[str, Callable[..., Any]]:
    """The session actions of the vm actor (see docs/sessions.md)."""

    async def manager(c: ActorContext) -> SessionManager:
        sandbox = await sandbox_of(c)
        return session_manager(c, st(c), sandbox)

    async def create_session(c: ActorContext, agent_type: Any, opts: Any = None) -> dict[str, Any]:
        """Start an agent (``agent_type``, e.g. ``coding-agent``) in the sandbox →
        ``{session_id, agent_type, capabilities, agent_info}``."""
        o = parse_call_options(CreateSessionOptions, opts, "create_session")
        sm = await manager(c)
        info = await sm.create_session(_text(agent_type, "agent_type"), **o.model_dump())
        _records(c)[info.session_id] = sm.record(info.session_id).model_dump(mode="json")
        st(c).holds[info.session_id] = c.hold()
        st(c).last_active[info.session_id] = time.time()
        await arm_idle_check(c)
        return info.model_dump(mode="json")

    async def send_prompt(c: ActorContext, session_id: Any, text: Any) -> dict[str, Any]:
        """Prompt the agent and wait for the turn to end → ``{stop_reason, text, usage}``."""
        sm = await manager(c)
        sid = _text(session_id, "session_id")
        active = st(c).last_active
        active[sid] = time.time()
        try:
            result = await sm.send_prompt(sid, _text(text, "text"))
        finally:
            active[sid] = time.time()
        return result.model_dump(mode="json")

    async def cancel_prompt(c: ActorContext, session_id: Any) -> None:
        sm = await manager(c)
        await sm.cancel_prompt(_text(session_id, "session_id"))

    async def respond_permission(
        c: ActorContext, session_id: Any, permission_id: Any, reply: Any
    ) -> None:
        """Answer a ``permission_request`` event: ``once``, ``always`` or ``reject``."""
        if reply not in ("once", "always", "reject"):
            raise InvalidRequest("reply must be 'once', 'always' or 'reject'", field="reply")
        sm = await manager(c)
        await sm.respond_permission(
            _text(session_id, "session_id"), _text(permission_id, "permission_id"), reply
        )

    async def close_session(c: ActorContext, session_id: Any) -> None:
        sid = _text(session_id, "session_id")
        sm = await manager(c)
        try:
            await sm.close_session(sid)
        finally:
            _records(c).pop(sid, None)
            st(c).last_active.pop(sid, None)
            release = st(c).holds.pop(sid, None)
            if release is not None:
                release()

    async def close_idle_sessions(c: ActorContext) -> list[str]:
        """Scheduled: close sessions without a prompt for the session idle timeout
        (``AGENTVM_SESSION_IDLE_TIMEOUT``); returns the ids it closed."""
        c.state["session_idle_check"] = None
        s = st(c)
        limit, now = session_idle_timeout(), time.time()
        closed = []
        for sid in list(_records(c)):
            session = s.manager.sessions.get(sid) if s.manager is not None else None
            busy = session is not None and session.prompt_lock.locked()
            if busy or now - s.last_active.get(sid, now) < limit:
                continue
            try:
                await close_session(c, sid)
            except SessionNotFound:
                _records(c).pop(sid, None)
            closed.append(sid)
        await arm_idle_check(c)
        return closed

    async def list_sessions(c: ActorContext) -> list[dict[str, Any]]:
        s = st(c)
        if s.manager is None:
            return []
        return [x.model_dump(mode="json") for x in await s.manager.list_sessions()]

    async def get_session_events(
        c: ActorContext, session_id: Any, opts: Any = None
    ) -> list[dict[str, Any]]:
        """Stored updates of a session with ``seq > since`` (works after it closed):
        at most ``limit`` (default 1000) and about 8 MiB; page with ``since``."""
        sid = _text(session_id, "session_id")
        o = parse_call_options(EventsOptions, opts, "get_session_events")
        events = await ActorLogEventStore(c).read(sid, o.since, limit=o.limit)
        if not events and sid not in _records(c) and o.since == 0:
            raise SessionNotFound(f"no session {sid!r}", session_id=sid)
        out: list[dict[str, Any]] = []
        size = 0
        for e in events:
            dumped = e.model_dump(mode="json")
            size += len(e.model_dump_json())
            if out and size > EVENTS_PAGE_BYTES:
                break
            out.append(dumped)
        return out

    async def llm_usage(c: ActorContext) -> dict[str, Any]:
        """Tokens used through the gateway, in total and per session."""
        if gateway is None:
            return {"total": c.state.get("llm_usage") or Usage().model_dump(), "sessions": {}}
        return gateway.usage(c.actor_id).model_dump(mode="json")

    async def set_token_budget(c: ActorContext, budget: Any) -> None:
        """Cap the tokens this vm may use through the gateway (None: no cap)."""
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise InvalidRequest("budget must be a non-negative integer or null", field="budget")
        c.state["token_budget"] = budget
        if gateway is not None:
            gateway.set_budget(c.actor_id, budget)

    return {
        "create_session": create_session,
        "send_prompt": send_prompt,
        "cancel_prompt": cancel_prompt,
        "respond_permission": respond_permission,
        "close_session": close_session,
        "close_idle_sessions": close_idle_sessions,
        "list_sessions": list_sessions,
        "get_session_events": get_session_events,
        "llm_usage": llm_usage,
        "set_token_budget": set_token_budget,
    }


async def reattach_sessions(c: ActorContext, s: SessionState, sandbox: Sandbox) -> None:
    """After a host restart: listen to the agents that kept running."""
    records = _records(c)
    if not records:
        return
    sm = session_manager(c, s, sandbox)
    for sid, data in list(records.items()):
        try:
            summary = await sm.reattach(SessionRecord.model_validate(data))
        except Exception:
            log.exception("re-attaching session %s of vm %s failed", sid, list(c.key))
            continue
        if summary.status not in ("exited", "closed"):
            s.holds[sid] = c.hold()


async def detach_sessions(s: SessionState) -> None:
    """Host shutting down or vm sleeping: stop listening; agents keep running."""
    if s.manager is not None:
        await s.manager.close()
    s.manager = None
    s.sandbox = None
    for release in list(s.holds.values()):
        release()
    s.holds.clear()
