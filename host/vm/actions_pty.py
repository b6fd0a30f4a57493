"""The vm actor's terminal actions: ``open_terminal``, ``list_terminals``,
``close_terminal``. The terminal's bytes do not travel through actions: attach over
``WS /vms/{key}/pty`` (``host/server/routes_pty.py``) or ``host.sandbox.pty``."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from host.app import HostSettings
from host.sandbox import pty
from orchestrator import ActorContext
from orchestrator.definitions import action
from orchestrator.errors import InvalidRequest

from .actions_base import Opts, VmActionsBase, check_command, sandbox_of, used
from .options import parse_call_options

MAX_DIMENSION = 1000


class TerminalOptions(Opts):
    cols: int = Field(default=80, ge=1, le=MAX_DIMENSION)
    rows: int = Field(default=24, ge=1, le=MAX_DIMENSION)
    command: str | list[str] | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    idle_timeout: float | None = Field(default=None, gt=0)


def check_terminal_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidRequest("terminal must be a terminal id (a short string)", field="terminal")
    return value


class TerminalActions(VmActionsBase):
    """Terminals (a login shell on a pty) that outlive their websocket."""

    settings: HostSettings | None = None

    def _idle_timeout(self) -> float:
        return (self.settings or HostSettings()).terminal_idle_timeout

    @action
    @used
    async def open_terminal(self, c: ActorContext, opts: Any = None) -> dict[str, Any]:
        """Start a terminal → ``{id, pid, cols, rows}`` (at most 8 open per vm: 429)."""
        o = parse_call_options(TerminalOptions, opts, "open_terminal")
        command = check_command(o.command) if o.command is not None else None
        sandbox = await sandbox_of(c)
        return await pty.open_terminal(
            sandbox,
            cols=o.cols,
            rows=o.rows,
            command=command,
            cwd=o.cwd,
            env=o.env,
            idle_timeout=o.idle_timeout or self._idle_timeout(),
        )

    @action
    @used
    async def list_terminals(self, c: ActorContext) -> list[dict[str, Any]]:
        return [t.model_dump() for t in await pty.list_terminals(await sandbox_of(c))]

    @action
    @used
    async def close_terminal(self, c: ActorContext, terminal: Any) -> dict[str, Any]:
        """Hang up a terminal → ``{id, exit_code}``."""
        end = await pty.close_terminal(await sandbox_of(c), check_terminal_id(terminal))
        return {"id": end.id, "exit_code": end.exit_code}
