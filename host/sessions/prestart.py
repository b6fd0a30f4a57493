"""Pre-started agents: one initialized agent process per type, ready for the next
``create_session`` (docs/sessions.md, "Pre-started agents"). A mixin of
:class:`~host.sessions.manager.SessionManager` (kept apart for size)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from host.sandbox import SandboxError

from .agents import AgentCommand, AgentOverrides, resolve_agent
from .errors import AgentStartFailed

if TYPE_CHECKING:
    from host.sandbox import Sandbox

    from .models import PermissionPolicy
    from .session import Session

log = logging.getLogger("agentvm.sessions")

HOME = "/home/user"
# In the environment of pre-started agents (to find strays after a host crash).
PRESTARTED_ENV = "AGENTVM_PRESTARTED"
# How long listing the sandbox's processes may take when the vm sleeps or wakes.
LIST_TIMEOUT = 10.0


class PrestartMixin:
    """warm_up, taking and refilling pre-started agents, killing strays."""

    # Waits for a taken agent's session to end, to start the next (_refill_after).
    _refill_waits: set[asyncio.Task[None]] | None = None
    # Pids of the agents adopted on wake (adopt_prestarted): not strays.
    _adopted_pids: frozenset[int] = frozenset()

    if TYPE_CHECKING:
        sandbox: Sandbox
        agents: AgentOverrides | None
        sessions: dict[str, Session]
        prestart: tuple[str, ...]
        _warm: dict[str, asyncio.Task[tuple[Session, Any]]]
        _warm_failed: set[str]
        _closed: bool

        def _agent_env(self, caller: Any) -> dict[str, str]: ...

        async def _start(
            self,
            agent_type: str,
            agent: AgentCommand,
            session_id: str,
            proc_env: dict[str, str],
            workdir: str,
            permission_policy: PermissionPolicy,
            *,
            prestarted: bool = False,
        ) -> tuple[Session, Any]: ...

        async def _abandon(self, session: Session) -> None: ...

    def warm_up(self) -> None:
        """Start (in the background) one agent process of each ``prestart`` type that
        has none; ``create_session`` takes it and starts the next."""
        for agent_type in self.prestart:
            if agent_type not in self._warm:
                self._refill(agent_type)

    async def _take_prestarted(self, agent_type: str) -> tuple[Session, Any] | None:
        """The pre-started agent of this type (waiting for it if it is still starting,
        which is never slower than a new one); the next starts once its session ended
        (:meth:`_refill_after`). None: none usable (and the next starts now)."""
        warm = self._warm.pop(agent_type, None)
        if warm is None:
            return None
        try:
            session, init = await warm
        except AgentStartFailed as exc:
            log.warning("pre-started %s agent failed; starting a new one: %s", agent_type, exc)
            self._refill(agent_type)
            return None
        if session.exited.is_set():
            await self._abandon(session)
            self._refill(agent_type)
            return None
        self._refill_after(session, agent_type)
        return session, init

    def _refill_after(self, session: Session, agent_type: str) -> None:
        """Start the next agent of this type once ``session`` (which took the last
        one) ended, not right away: an agent's start is CPU (the coding agent's ~60
        ms; SDK-based agents ~1-3 s of imports) that would compete with the new
        session's first turn, and its memory (~20 MiB) is wasted in a vm that runs a
        single session (a fixBug's, a codeReview's), which would kill it unused."""

        async def wait() -> None:
            await session.exited.wait()
            self._refill(agent_type)

        if self._refill_waits is None:
            self._refill_waits = set()
        task = asyncio.create_task(wait(), name=f"prestart-after-{session.id}")
        self._refill_waits.add(task)
        task.add_done_callback(self._refill_waits.discard)

    def _refill(self, agent_type: str) -> None:
        if self._closed or agent_type in self._warm_failed or agent_type not in self.prestart:
            return
        task = asyncio.create_task(self._prestart(agent_type), name=f"prestart-{agent_type}")
        task.add_done_callback(_ignore_result)
        self._warm[agent_type] = task

    async def _prestart(self, agent_type: str) -> tuple[Session, Any]:
        try:
            agent = resolve_agent(agent_type, self.agents)
            session_id = "s-" + secrets.token_hex(8)
            env = {
                **agent.env,
                **self._agent_env(None),
                "AGENTVM_SESSION_ID": session_id,
                PRESTARTED_ENV: "1",
            }
            return await self._start(
                agent_type, agent, session_id, env, HOME, "allow", prestarted=True
            )
        except Exception:
            self._warm_failed.add(agent_type)  # no retry loop (e.g. not in the image)
            raise

    async def wait_prestarted(self) -> None:
        """Until the pre-started agents are initialized (or failed); for benchmarks."""
        for task in list(self._warm.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _drop_prestarted(self) -> None:
        """Kill the pre-started agents (nobody will take them)."""
        for wait in list(self._refill_waits or ()):
            wait.cancel()
        tasks = list(self._warm.values())
        self._warm.clear()
        for task in tasks:
            if not task.done():
                task.cancel()
            try:
                session, _ = await task
            except (asyncio.CancelledError, Exception):  # nothing to kill
                continue
            await self._abandon(session)

    async def detach_prestarted(self) -> list[dict[str, Any]]:
        """Before the vm sleeps: stop listening to the initialized pre-started agents,
        which keep running for :meth:`adopt_prestarted` on the next wake (a new one
        costs its start-up again: ~60 ms of CPU for the coding agent, ~1 s for
        SDK-based ones); the ones still starting are killed.
        Returns what to keep (JSON) until then."""
        kept: list[dict[str, Any]] = []
        ready = {t: task.result() for t, task in self._warm.items() if _ok(task)}
        started: dict[int, float] = {}
        if ready:  # the start times tell the same process from a reused pid on wake
            with contextlib.suppress(SandboxError, TimeoutError):
                async with asyncio.timeout(LIST_TIMEOUT):
                    procs = await self.sandbox.list_processes()
                started = {p.pid: p.started_at for p in procs if p.running}
        for agent_type, (session, init) in ready.items():
            if session.exited.is_set() or session.record.pid not in started:
                continue
            del self._warm[agent_type]
            await session.detach()
            kept.append(
                {
                    "agent_type": agent_type,
                    "session_id": session.id,
                    "pid": session.record.pid,
                    "started_at": started[session.record.pid],
                    "generation": session.record.generation,
                    "offset": session.recv_offset,
                    "init": init.model_dump(mode="json", by_alias=True, exclude_none=True),
                }
            )
        await self._drop_prestarted()
        return kept

    async def adopt_prestarted(self, kept: Any) -> list[int]:
        """On wake: listen again to the pre-started agents :meth:`detach_prestarted`
        kept, if each is still the same running process (pid and start time, as the
        supervisor recorded them). One process listing and one attach per agent
        (bounded); a gone agent is replaced by :meth:`warm_up`. Returns the pids."""
        from acp.schema import InitializeResponse

        from .models import SessionRecord
        from .session import Session

        if not isinstance(kept, list) or not kept:
            return []
        async with asyncio.timeout(LIST_TIMEOUT):
            procs = await self.sandbox.list_processes()
        running = {p.pid: p for p in procs if p.running}
        adopted: list[int] = []
        for entry in kept[: len(self.prestart)]:
            try:
                agent_type, pid = str(entry["agent_type"]), int(entry["pid"])
                proc = running.get(pid)
                if (
                    agent_type not in self.prestart
                    or agent_type in self._warm
                    or proc is None
                    or proc.started_at != entry["started_at"]
                ):
                    continue
                init = InitializeResponse.model_validate(entry["init"])
                record = SessionRecord(
                    session_id=str(entry["session_id"]),
                    agent_type=agent_type,
                    pid=pid,
                    acp_session_id="",
                    cwd=HOME,
                    permission_policy="allow",
                    generation=int(entry["generation"]) + 1,
                )
                handle = await self.sandbox.attach(pid, offset=int(entry["offset"]), replace=True)
            except (KeyError, TypeError, ValueError, SandboxError) as exc:
                log.info("not adopting a pre-started agent (%r): %s", entry, exc)
                continue
            session = Session(self, record)  # type: ignore[arg-type]
            session.prestarted = True
            session.start(handle)
            self._warm[agent_type] = asyncio.create_task(
                _ready(session, init), name=f"prestart-{agent_type}"
            )
            adopted.append(pid)
        self._adopted_pids = frozenset(adopted)
        return adopted

    async def kill_stale_prestarted(self) -> list[int]:
        """Kill agents pre-started by an earlier host process that ended without
        :meth:`close` (e.g. killed): running processes that are not sessions of this
        manager and run a pre-start type's command, or have the pre-start marker in
        their environment. (A non-dumpable agent's environment cannot be read, hence
        the command: such a process is an orphan of a lost ``create_session``.)"""
        known = {s.record.pid for s in self.sessions.values()}
        known |= {t.result()[0].record.pid for t in self._warm.values() if _ok(t)}
        known |= self._adopted_pids
        commands = set()
        for agent_type in self.prestart:
            with contextlib.suppress(Exception):
                commands.add(tuple(resolve_agent(agent_type, self.agents).command))
        killed: list[int] = []
        for proc in await self.sandbox.list_processes():
            if not proc.running or proc.pid in known:
                continue
            stale = tuple(proc.argv) in commands
            if not stale:
                try:
                    environ = await self.sandbox.read_file(f"/proc/{proc.pid}/environ")
                except SandboxError:
                    continue
                stale = f"{PRESTARTED_ENV}=1".encode() in environ.split(b"\0")
            if stale:
                with contextlib.suppress(SandboxError):
                    await self.sandbox.kill_process(proc.pid)
                killed.append(proc.pid)
        return killed


async def _ready(session: Session, init: Any) -> tuple[Session, Any]:
    return session, init


def _ok(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed pre-start is logged when taken
