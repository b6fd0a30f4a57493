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
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from host.gateway import LLMGateway, Usage
from host.sandbox import Sandbox, SandboxError
from host.sessions import (
    ActorLogEventStore,
    SessionEvent,
    SessionInfo,
    SessionManager,
    SessionNotFound,
    SessionRecord,
    transcript,
)
from host.sessions.errors import ResumeUnsupported
from host.sessions.models import SessionStats
from orchestrator import ActorContext
from orchestrator.definitions import action, actions_of
from orchestrator.errors import InvalidRequest

from .options import parse_call_options
from .pool_agents import adopt_pool_agents, drop_pool_agents

if TYPE_CHECKING:
    from host.app import HostSettings
    from orchestrator import Engine

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
    # Validated by the manager (options.py): a bad entry is a 400 naming
    # mcp_servers.<i>.<field>.
    mcp_servers: list[Any] | None = None
    allowed_tools: list[Any] | None = None
    disallowed_tools: list[Any] | None = None
    mode: Literal["agent", "single_shot"] = "agent"


class ResumeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] | None = None


class PruneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than: float = Field(ge=0)


# Closed sessions whose records the vm keeps (for resume/fork), newest last.
CLOSED_KEPT = 256


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
        self._release([event])
        return seq

    async def append_many(self, events: list[SessionEvent]) -> None:
        await super().append_many(events)
        self._release(events)

    def _release(self, events: list[SessionEvent]) -> None:
        for e in events:
            if e.kind in ("agent_exit", "session_closed") and (
                r := self._holds.pop(e.session_id, None)
            ):
                r()


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


async def arm_retention(c: ActorContext) -> None:
    """Make sure an ``expire_closed_sessions`` call is scheduled while closed
    sessions' records are kept (durable: survives restarts)."""
    closed = {k: v for k, v in _closed(c).items() if not v.get("compacted")}
    if c.state.get("session_retention_check") is None and closed:
        oldest = min(v["closed_at"] for v in closed.values())
        due = max(oldest + _settings().session_retention - time.time(), 1.0)
        c.state["session_retention_check"] = await c.schedule.after(due, "expire_closed_sessions")


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
            max_sessions=_settings().max_sessions_per_vm,
            max_host_sessions=_settings().max_sessions,
        )
        # A send_prompt cancelled by the engine stopping (host restart) leaves the
        # agent's turn running for the next host; any other cancel stops the turn.
        s.manager.keep_turn_on_cancel = lambda: c.engine_stopping
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
        await drop_pool_agents([sandbox])
        return
    sm = session_manager(c, s, sandbox)
    kept = c.state.pop("prestarted", None)  # kept running over the sleep (sleep_sessions)
    if adopted:
        try:  # the pre-started agents kept over the sleep, then any strays
            if kept:
                await sm.adopt_prestarted(kept)
            await sm.kill_stale_prestarted()
        except (SandboxError, TimeoutError) as exc:
            log.info("could not look for stale agents in vm %s: %s", list(c.key), exc)
    else:  # a warm-pool container comes with its agents started (pool_agents.py)
        await adopt_pool_agents(sm, sandbox)
    sm.warm_up()


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string", field=field)
    return value


def _closed(c: ActorContext) -> dict[str, Any]:
    """Records of closed sessions (resume/fork): ``{id: {record, closed_at}}``."""
    closed: dict[str, Any] = c.state.setdefault("closed_sessions", {})
    return closed


def _keep_closed(c: ActorContext, sid: str, record: dict[str, Any]) -> None:
    closed = _closed(c)
    closed[sid] = {"record": record, "closed_at": time.time()}
    while len(closed) > CLOSED_KEPT:  # bounded: the oldest go first
        closed.pop(min(closed, key=lambda k: closed[k]["closed_at"]))


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


class SessionActions:
    """The session actions of the vm actor (see docs/sessions.md), one method each;
    :func:`session_actions` turns them into the actor's ``actions`` entries.

    ``st(c)`` is the vm's :class:`SessionState`, ``sandbox_of(c)`` its live sandbox
    (acquired on demand), ``gateway`` the host's LLM gateway (None: none)."""

    def __init__(
        self,
        st: Callable[[ActorContext], SessionState],
        sandbox_of: SandboxOf,
        gateway: LLMGateway | None,
    ) -> None:
        self.st = st
        self.sandbox_of = sandbox_of
        self.gateway = gateway

    async def manager(self, c: ActorContext) -> SessionManager:
        sandbox = await self.sandbox_of(c)
        return session_manager(c, self.st(c), sandbox)

    @action
    async def create_session(
        self, c: ActorContext, agent_type: Any, opts: Any = None
    ) -> dict[str, Any]:
        """Start an agent (``agent_type``, e.g. ``coding-agent``) in the sandbox →
        ``{session_id, agent_type, capabilities, agent_info}``."""
        o = parse_call_options(CreateSessionOptions, opts, "create_session")
        sm = await self.manager(c)
        info = await sm.create_session(_text(agent_type, "agent_type"), **o.model_dump())
        return await self._opened(c, sm, info)

    async def _opened(
        self, c: ActorContext, sm: SessionManager, info: SessionInfo
    ) -> dict[str, Any]:
        """Bookkeeping of a session just created (also resumed or forked)."""
        s = self.st(c)
        _records(c)[info.session_id] = sm.record(info.session_id).model_dump(mode="json")
        s.holds[info.session_id] = c.hold()
        s.last_active[info.session_id] = time.time()
        await arm_idle_check(c)
        return info.model_dump(mode="json")

    def _known_record(self, c: ActorContext, sm: SessionManager, sid: str) -> SessionRecord:
        """A session's record: open, closed this wake, or kept since it closed."""
        session = sm.sessions.get(sid)
        if session is not None:
            return session.record
        data = _records(c).get(sid) or _closed(c).get(sid, {}).get("record")
        if data is None:
            raise SessionNotFound(f"no session {sid!r} in this vm", session_id=sid)
        return SessionRecord.model_validate(data)

    @action
    async def resume_session(
        self, c: ActorContext, session_id: Any, opts: Any = None
    ) -> dict[str, Any]:
        """A new session continuing a closed session's conversation (ACP session/load
        where the agent has it, else the stored transcript) → like create_session,
        with ``resumed_from``."""
        sid = _text(session_id, "session_id")
        o = parse_call_options(ResumeOptions, opts, "resume_session")
        sm = await self.manager(c)
        if sid in _records(c):
            raise ResumeUnsupported(
                f"session {sid} is still open: send it prompts, or fork it", session_id=sid
            )
        info = await sm.resume_session(sid, record=self._known_record(c, sm, sid), env=o.env)
        return await self._opened(c, sm, info)

    @action
    async def fork_session(
        self, c: ActorContext, session_id: Any, opts: Any = None
    ) -> dict[str, Any]:
        """A new session starting from a copy of a session's conversation (open or
        closed; the original is not changed) → like create_session, with ``forked_from``."""
        sid = _text(session_id, "session_id")
        o = parse_call_options(ResumeOptions, opts, "fork_session")
        sm = await self.manager(c)
        info = await sm.fork_session(sid, record=self._known_record(c, sm, sid), env=o.env)
        return await self._opened(c, sm, info)

    @action
    async def session_stats(self, c: ActorContext) -> dict[str, Any]:
        """This vm's sessions: ``{open, prompting, idle, tokens, limit}``."""
        s = self.st(c)
        if s.manager is None:
            return SessionStats(limit=_settings().max_sessions_per_vm).model_dump()
        return s.manager.session_stats().model_dump()

    @action
    async def prune_sessions(self, c: ActorContext, opts: Any = None) -> list[str]:
        """Close the sessions idle (no prompt running) for ``older_than`` seconds or
        more; returns their ids."""
        o = parse_call_options(PruneOptions, opts, "prune_sessions")
        s = self.st(c)
        if s.manager is None:
            return []
        closed = []
        for sid in s.manager.idle_sessions(o.older_than):
            await self.close_session(c, sid)
            closed.append(sid)
        return closed

    @action
    async def send_prompt(self, c: ActorContext, session_id: Any, text: Any) -> dict[str, Any]:
        """Prompt the agent and wait for the turn to end → ``{stop_reason, text, usage}``.
        A caller cancelled meanwhile (e.g. its run) cancels the agent's turn too."""
        sm = await self.manager(c)
        sid = _text(session_id, "session_id")
        active = self.st(c).last_active
        active[sid] = time.time()
        try:
            result = await sm.send_prompt(sid, _text(text, "text"))
        finally:
            active[sid] = time.time()
        return result.model_dump(mode="json")

    @action
    async def cancel_prompt(self, c: ActorContext, session_id: Any) -> None:
        """Ask the agent to stop the running turn (it answers ``cancelled``)."""
        sm = await self.manager(c)
        await sm.cancel_prompt(_text(session_id, "session_id"))

    @action
    async def respond_permission(
        self, c: ActorContext, session_id: Any, permission_id: Any, reply: Any
    ) -> None:
        """Answer a ``permission_request`` event: ``once``, ``always`` or ``reject``."""
        if reply not in ("once", "always", "reject"):
            raise InvalidRequest("reply must be 'once', 'always' or 'reject'", field="reply")
        sm = await self.manager(c)
        await sm.respond_permission(
            _text(session_id, "session_id"), _text(permission_id, "permission_id"), reply
        )

    @action
    async def close_session(self, c: ActorContext, session_id: Any) -> None:
        """Stop the agent process and forget the session (its events stay readable)."""
        sid = _text(session_id, "session_id")
        sm = await self.manager(c)
        s = self.st(c)
        try:
            await sm.close_session(sid)
        finally:
            record = _records(c).pop(sid, None)
            if record is not None:
                _keep_closed(c, sid, record)
                await arm_retention(c)
            s.last_active.pop(sid, None)
            release = s.holds.pop(sid, None)
            if release is not None:
                release()

    @action
    async def close_idle_sessions(self, c: ActorContext) -> list[str]:
        """Scheduled: close sessions without a prompt for the session idle timeout
        (``AGENTVM_SESSION_IDLE_TIMEOUT``); returns the ids it closed."""
        c.state["session_idle_check"] = None
        s = self.st(c)
        limit, now = session_idle_timeout(), time.time()
        closed = []
        for sid in list(_records(c)):
            session = s.manager.sessions.get(sid) if s.manager is not None else None
            # A prompt running (also one of an earlier host process) is not idle.
            busy = session is not None and (
                session.prompt_lock.locked() or session.status == "prompting"
            )
            if busy or now - s.last_active.get(sid, now) < limit:
                continue
            try:
                await self.close_session(c, sid)
            except SessionNotFound:
                _records(c).pop(sid, None)
            closed.append(sid)
        await arm_idle_check(c)
        return closed

    @action
    async def expire_closed_sessions(self, c: ActorContext) -> list[str]:
        """Scheduled: compact the event logs of sessions closed longer than
        ``AGENTVM_SESSION_RETENTION`` into one ``transcript`` event each (the
        streaming chunks go; the conversation and per-turn summaries stay, so
        ``resume_session``/``fork_session`` still work). Returns their ids."""
        c.state["session_retention_check"] = None
        closed, cutoff = _closed(c), time.time() - _settings().session_retention
        due = [
            sid for sid, v in closed.items() if not v.get("compacted") and v["closed_at"] <= cutoff
        ]
        store = ActorLogEventStore(c)
        for sid in due:
            events: list[SessionEvent] = []
            since = 0
            while page := await store.read(sid, since, limit=1000):
                events.extend(page)
                since = page[-1].seq
            await store.compact(sid, transcript.compact(events))
            closed[sid]["compacted"] = True
        await arm_retention(c)
        return due

    @action
    async def list_sessions(self, c: ActorContext) -> list[dict[str, Any]]:
        """The vm's sessions this wake: ``[{session_id, status, pid, ...}]``."""
        s = self.st(c)
        if s.manager is None:
            return []
        return [x.model_dump(mode="json") for x in await s.manager.list_sessions()]

    @action
    async def get_session_events(
        self, c: ActorContext, session_id: Any, opts: Any = None
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

    @action
    async def llm_usage(self, c: ActorContext) -> dict[str, Any]:
        """Tokens used through the gateway, in total and per session."""
        if self.gateway is None:
            return {"total": c.state.get("llm_usage") or Usage().model_dump(), "sessions": {}}
        return self.gateway.usage(c.actor_id).model_dump(mode="json")

    @action
    async def set_token_budget(self, c: ActorContext, budget: Any) -> None:
        """Cap the tokens this vm may use through the gateway (None: no cap)."""
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise InvalidRequest("budget must be a non-negative integer or null", field="budget")
        c.state["token_budget"] = budget
        if self.gateway is not None:
            self.gateway.set_budget(c.actor_id, budget)


def session_actions(
    st: Callable[[ActorContext], SessionState],
    sandbox_of: SandboxOf,
    gateway: LLMGateway | None,
) -> dict[str, Callable[..., Any]]:
    """The session actions of the vm actor, as its ``actions`` entries."""
    return actions_of(SessionActions(st, sandbox_of, gateway))


def session_pids(s: SessionState) -> set[int]:
    """Pids of the vm's session agents (and pre-started ones) this wake: their output
    is the sessions' (re-attaching them as plain processes would steal it)."""
    if s.manager is None:
        return set()
    return s.manager.agent_pids()


async def wake_session_vms(engine: Engine, names: Iterable[str]) -> list[str]:
    """At host start: wake every vm (actors of the types ``names``) whose state records
    open sessions, so their agents are re-attached — event streams resume and a
    prompt of the previous host process ends — without waiting for a caller to touch
    the vm. Returns the woken actor ids."""
    woken: list[str] = []
    for name in names:
        for info in await engine.list_actors(name):
            try:
                state = await engine.get_state(info.actor_id)
                if not (isinstance(state, dict) and state.get("sessions")):
                    continue
                await engine.call(info.actor_id, "list_sessions", [])  # wakes it
                woken.append(info.actor_id)
            except Exception as exc:  # one vm's trouble must not keep the others asleep
                log.warning("could not wake vm %s to re-attach its sessions: %s", info.key, exc)
    if woken:
        log.info("re-attached the sessions of %d vm(s) at start-up", len(woken))
    return woken


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


async def sleep_sessions(c: ActorContext, s: SessionState) -> None:
    """The vm goes to sleep: detach as :func:`detach_sessions` does, but keep the
    pre-started agents running and remember them in the actor's state, for
    ``sessions_up`` to adopt on wake instead of starting new ones."""
    if s.manager is not None and s.manager.prestart:
        kept = await s.manager.detach_prestarted()  # bounded
        if kept:
            c.state["prestarted"] = kept
    await detach_sessions(s)


async def detach_sessions(s: SessionState) -> None:
    """Host shutting down or vm sleeping: stop listening; agents keep running."""
    if s.manager is not None:
        await s.manager.close()
    s.manager = None
    s.sandbox = None
    for release in list(s.holds.values()):
        release()
    s.holds.clear()
