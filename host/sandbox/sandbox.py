"""A handle on one sandbox: its container, its control socket, and every operation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .cgroups import ExecTracker
from .client import SandboxClient
from .connection import LinkClosed, LinkUnresponsive, SupervisorConnection
from .control import ControlServer
from .errors import SandboxLost, SandboxUnresponsive

if TYPE_CHECKING:
    from .backend import SandboxBackend

# How often to re-check the container while waiting for its supervisor to dial in.
_CHECK_EVERY = 1.0


class Sandbox(SandboxClient):
    """Calls go over the supervisor link; a dead container or broken link during a
    call raises :class:`SandboxLost`. ``connect_timeout`` bounds how long a call
    waits for the supervisor to (re)connect."""

    def __init__(
        self,
        backend: SandboxBackend,
        *,
        id: str,
        name: str,
        volume: str,
        control: ControlServer,
        key: list[str],
        connect_timeout: float = 30.0,
    ) -> None:
        self.backend = backend
        self.id = id
        self.name = name
        self.volume = volume
        self.control = control
        self.key = key
        self.connect_timeout = connect_timeout
        # Set when the host gave up on an unresponsive supervisor: the next
        # ensure_running() unpauses or restarts the container.
        self.unresponsive = False
        self._trackers: dict[str, ExecTracker | None] = {}

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, id={self.id[:12]!r})"

    @property
    def connected(self) -> bool:
        return self.control.live() is not None

    async def wait_ready(self, timeout: float | None = None) -> SupervisorConnection:
        """Wait until the supervisor dialled in; ``SandboxLost`` if the container is not
        running or the supervisor stays away for ``timeout`` seconds."""
        conn = self.control.live()
        if conn is not None:
            return conn
        limit = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self.control.connection(max(0.0, min(_CHECK_EVERY, remaining)))
            except TimeoutError:
                pass
            info = await self.backend.inspect(self)
            if info.status == "paused":
                self.unresponsive = True
                raise SandboxUnresponsive(f"sandbox {self.name} is paused")
            if info.status != "running":
                detail = f", exit code {info.exit_code}" if info.exit_code is not None else ""
                oom = ", killed for exceeding its memory limit" if info.oom_killed else ""
                raise SandboxLost(f"sandbox {self.name} is {info.status}{detail}{oom}")
            if time.monotonic() >= deadline:
                raise SandboxLost(
                    f"supervisor of sandbox {self.name} did not connect within {limit:g}s"
                )

    async def ensure_running(self, timeout: float | None = None) -> None:
        """Start the container if it stopped or died (its /home/user is kept); after
        the supervisor was found unresponsive, unpause or restart it."""
        if self.connected and not self.unresponsive:
            return
        limit = timeout or self.connect_timeout
        info = await self.backend.inspect(self)
        if info.status == "paused":
            await self.backend.unpause(self)
            info = await self.backend.inspect(self)
        if self.unresponsive and info.status == "running":
            # Frozen some other way (or still silent after the unpause): restart.
            if not await self._answers():
                await self.backend.kill(self)
                info = await self.backend.inspect(self)
        if info.status != "running":
            await self.backend.start(self, timeout=limit)
        else:
            await self.wait_ready(timeout)
        self.unresponsive = False

    async def _answers(self) -> bool:
        """True if the supervisor dials in and answers a ping within a short while."""
        try:
            conn = await self.control.connection(self.exec_grace)
        except TimeoutError:
            return False
        return await conn.probe(self.exec_grace)

    async def _tracker(self, conn: SupervisorConnection) -> ExecTracker | None:
        boot = conn.supervisor_boot_id
        if boot not in self._trackers:
            pid = await self.backend.init_pid(self)
            self._trackers = {boot: ExecTracker.for_container(pid)}
        return self._trackers[boot]

    async def _link(self) -> SupervisorConnection:
        conn = self.control.live()
        return conn if conn is not None else await self.wait_ready()

    def _lost(self, exc: LinkClosed) -> SandboxLost:
        if isinstance(exc, LinkUnresponsive):
            self.unresponsive = True
            return SandboxUnresponsive(f"sandbox {self.name} is not answering ({exc})")
        return SandboxLost(f"lost sandbox {self.name} during the call ({exc})")

    async def close(self) -> None:
        """Forget this handle: stop listening (the container keeps running)."""
        await self.control.close()
