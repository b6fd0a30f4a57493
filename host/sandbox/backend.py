"""The backend interface: how sandboxes are created, found, stopped and removed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from .models import SandboxInfo, SandboxSpec

if TYPE_CHECKING:
    from .sandbox import Sandbox

# Label names put on every container and volume this package creates.
LABEL_MANAGED = "agentvm.managed"
LABEL_HOST = "agentvm.host"
LABEL_KEY = "agentvm.key"
LABEL_POOL = "agentvm.pool"
LABEL_VOLUME = "agentvm.volume"


class SandboxBackend(ABC):
    """A place sandboxes run (Docker first). Every method is async and safe to call
    from the event loop; ``host_id`` scopes what ``list_*`` and the reaper see."""

    host_id: str

    @abstractmethod
    async def create(
        self,
        spec: SandboxSpec,
        *,
        start: bool = True,
        name: str | None = None,
        volume: str | None = None,
    ) -> Sandbox:
        """Create (and by default start and wait for) a new sandbox; ``name`` (from
        ``new_name()``) and an existing home ``volume`` to mount are optional."""

    @abstractmethod
    def new_name(self) -> str:
        """A fresh, unique container name on this host."""

    @abstractmethod
    async def get(self, name_or_id: str) -> Sandbox:
        """Adopt an existing sandbox (e.g. after a host restart); ``SandboxNotFound`` if gone."""

    @abstractmethod
    async def start(self, sandbox: Sandbox, *, timeout: float = 30.0) -> None:
        """Start a stopped sandbox and wait until its supervisor dialled in."""

    @abstractmethod
    async def stop(self, sandbox: Sandbox, *, timeout: float = 5.0) -> None:
        """Stop the container; its /home/user volume is kept."""

    @abstractmethod
    async def remove(self, sandbox: Sandbox | str, *, volume: bool = True) -> None:
        """Remove the container (and by default its volume). Missing is not an error."""

    @abstractmethod
    async def inspect(self, sandbox: Sandbox | str) -> SandboxInfo: ...

    async def init_pid(self, sandbox: Sandbox) -> int:
        """Host pid of the sandbox's first process (its supervisor); 0 if unknown."""
        return 0

    async def unpause(self, sandbox: Sandbox) -> None:
        """Thaw a paused (frozen) sandbox."""
        raise NotImplementedError

    async def kill(self, sandbox: Sandbox) -> None:
        """Kill the container at once (it can be started again; /home/user is kept)."""
        raise NotImplementedError

    @abstractmethod
    async def list_sandboxes(self, *, all_hosts: bool = False) -> list[SandboxInfo]:
        """Containers this host created (for re-adoption and the orphan reaper)."""

    @abstractmethod
    async def list_volumes(self, *, all_hosts: bool = False) -> list[str]:
        """Names of home volumes this host created."""

    @abstractmethod
    async def remove_volume(self, name: str) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Stop listening for every adopted sandbox (containers keep running)."""
