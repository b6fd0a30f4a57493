"""Session manager features over the basics: resume, fork, stats, prune.

A mixin of :class:`~host.sessions.manager.SessionManager` (kept apart for size).

- ``resume_session(id)`` brings back a closed session's conversation in a new
  session (new id, ``resumed_from`` = the old one) with the same agent type, cwd and
  options: through ACP ``session/load`` of the old ACP session id when the agent
  advertises ``loadSession`` (the agent keeps its own transcript, e.g. in ``$HOME``,
  which survives in the vm), else by handing the conversation rebuilt from the stored
  events (transcript.py) to an agent that takes ``_meta.agentvm.history`` (the
  bundled coding agent advertises it in ``agentCapabilities._meta.agentvm``).
- ``fork_session(id)`` does the same from an open or closed session, by history only
  (``session/load`` would share the agent's own storage with the original).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ResumeUnsupported, SessionNotFound
from .models import SessionInfo, SessionRecord, SessionStats
from .options import SessionOptions
from .transcript import conversation

if TYPE_CHECKING:
    from .events import EventStore
    from .models import PermissionPolicy
    from .session import Session

OPEN = ("starting", "ready", "prompting")


def takes_history(capabilities: Mapping[str, Any]) -> bool:
    """The agent takes an earlier conversation in ``_meta.agentvm.history``."""
    meta = capabilities.get("_meta")
    agentvm = meta.get("agentvm") if isinstance(meta, dict) else None
    return isinstance(agentvm, dict) and bool(agentvm.get("history"))


class SessionFeatures:
    """resume_session, fork_session, session_stats, prune_sessions."""

    if TYPE_CHECKING:
        sessions: dict[str, Session]
        store: EventStore
        max_sessions: int | None

        async def _create(
            self,
            agent_type: str,
            opts: SessionOptions,
            *,
            env: Mapping[str, str] | None = None,
            cwd: str | None = None,
            permission_policy: PermissionPolicy = "allow",
            history: list[dict[str, Any]] | None = None,
            load: str | None = None,
            origin: dict[str, str] | None = None,
        ) -> SessionInfo: ...

        async def close_session(self, session_id: str) -> None: ...

        def open_count(self) -> int: ...

    def _record_of(self, session_id: str, record: SessionRecord | None) -> SessionRecord:
        if record is not None:
            return record
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(
                f"no session {session_id!r} to resume or fork (this vm does not know it)",
                session_id=session_id,
            )
        return session.record

    async def resume_session(
        self,
        session_id: str,
        *,
        record: SessionRecord | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SessionInfo:
        """A new session continuing closed session ``session_id``'s conversation.
        ``record``: the closed session's record when this manager no longer has it
        (e.g. the vm slept since)."""
        rec = self._record_of(session_id, record)
        live = self.sessions.get(session_id)
        if live is not None and live.status in OPEN:
            raise ResumeUnsupported(
                f"session {session_id} is still open: send it prompts, or fork it",
                session_id=session_id,
            )
        opts = SessionOptions.model_validate(rec.options)
        origin = {"resumed_from": session_id}
        common: dict[str, Any] = {"env": env, "cwd": rec.cwd, "origin": origin}
        if rec.capabilities.get("loadSession") and not takes_history(rec.capabilities):
            return await self._create(
                rec.agent_type,
                opts,
                permission_policy=rec.permission_policy,
                load=rec.acp_session_id,
                **common,
            )
        history = await self._history(session_id, rec)
        return await self._create(
            rec.agent_type, opts, permission_policy=rec.permission_policy, history=history, **common
        )

    async def fork_session(
        self,
        session_id: str,
        *,
        record: SessionRecord | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SessionInfo:
        """A new session starting from a copy of ``session_id``'s conversation (its
        finished turns); the original is not changed."""
        rec = self._record_of(session_id, record)
        history = await self._history(session_id, rec)
        return await self._create(
            rec.agent_type,
            SessionOptions.model_validate(rec.options),
            env=env,
            cwd=rec.cwd,
            permission_policy=rec.permission_policy,
            history=history,
            origin={"forked_from": session_id},
        )

    async def _history(self, session_id: str, rec: SessionRecord) -> list[dict[str, Any]]:
        if not takes_history(rec.capabilities):
            raise ResumeUnsupported(
                f"agent {rec.agent_type!r} of session {session_id} cannot take an earlier "
                "conversation (no agentvm history hand-over"
                + (
                    "; fork needs it)"
                    if rec.capabilities.get("loadSession")
                    else ", no session/load)"
                ),
                session_id=session_id,
                agent_type=rec.agent_type,
            )
        return conversation(await self.store.read(session_id))

    def session_stats(self) -> SessionStats:
        """Open sessions of this manager: how many prompt, how many idle, tokens used."""
        stats = SessionStats(limit=self.max_sessions)
        for session in self.sessions.values():
            if session.status not in OPEN:
                continue
            stats.open += 1
            stats.tokens += session.tokens
            if session.status == "prompting" or session.prompt_lock.locked():
                stats.prompting += 1
            elif session.status == "ready":
                stats.idle += 1
        return stats

    def idle_sessions(self, older_than: float) -> list[str]:
        """Open sessions with no prompt running and no activity for ``older_than`` s."""
        now = time.time()
        return [
            sid
            for sid, s in self.sessions.items()
            if s.status == "ready"
            and not s.prompt_lock.locked()
            and now - s.last_active >= older_than
        ]

    async def prune_sessions(self, older_than: float) -> list[str]:
        """Close the idle sessions (see :meth:`idle_sessions`); their ids."""
        closed = []
        for sid in self.idle_sessions(older_than):
            await self.close_session(sid)
            closed.append(sid)
        return closed


def host_session_stats() -> SessionStats:
    """Summed over every session manager of this host process (``GET /sessions/stats``)."""
    from .manager import LIVE_MANAGERS

    total = SessionStats()
    for manager in list(LIVE_MANAGERS):
        if getattr(manager, "_closed", False):
            continue
        one = manager.session_stats()
        total.open += one.open
        total.prompting += one.prompting
        total.idle += one.idle
        total.tokens += one.tokens
    return total
