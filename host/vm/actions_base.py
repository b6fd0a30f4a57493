"""What every group of vm actions shares: the per-vm vars, the live sandbox, the
"in use" mark and argument checks. The action classes (``actions_*.py``) build on
:class:`VmActionsBase`; :class:`host.vm.actor.VmActions` combines them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from pydantic import BaseModel, ConfigDict

from host.blobs import BlobStore
from host.sandbox import Sandbox
from orchestrator import ActorContext
from orchestrator.errors import EngineStopped, InvalidRequest

from .manager import SandboxManager, SandboxRecord
from .options import VmOptions
from .sessions import SessionState, gateway_up, sessions_up


class VmVars:
    """In-memory per-vm state (rebuilt on wake): the live handle and what runs."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.lock = asyncio.Lock()
        self.sandbox: Sandbox | None = None
        # The container as last acquired; survives a failed action's state rollback
        # so the next commit (or on_sleep) records it.
        self.record: SandboxRecord | None = None
        self.last_used: float | None = None
        self.pumps: dict[int, asyncio.Task[None]] = {}
        self.options: VmOptions | None = None
        self.sessions = SessionState()


class Opts(BaseModel):
    """Base of the actions' trailing options objects: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


# --- per-vm helpers -----------------------------------------------------------------------


def vm_vars(c: ActorContext) -> VmVars:
    v = c.vars
    assert isinstance(v, VmVars)
    return v


def vm_options(c: ActorContext) -> VmOptions:
    v = vm_vars(c)
    if v.options is None:
        v.options = VmOptions.model_validate(c.state["options"])
    return v.options


def current_record(c: ActorContext) -> SandboxRecord | None:
    v = vm_vars(c)
    if v.record is not None:
        return v.record
    data = c.state.get("sandbox")
    return SandboxRecord.from_json(data) if data else None


def remember(c: ActorContext, record: SandboxRecord | None) -> None:
    """Put the container in the state (committed with the action, or by on_sleep)."""
    if record is None:
        return
    data = record.to_json()
    if c.state.get("sandbox") != data:
        c.state["sandbox"] = data


async def sandbox_of(c: ActorContext) -> Sandbox:
    """The vm's live sandbox, acquired, started, adopted or recreated as needed.

    For actions added to the vm actor elsewhere (e.g. agent sessions)."""
    v = vm_vars(c)
    sandbox = v.sandbox
    if sandbox is None or not sandbox.connected:
        async with v.lock:
            sandbox = v.sandbox
            if sandbox is None or not sandbox.connected:
                record = current_record(c)
                fresh = record is None
                if record is None:
                    sandbox, record = await v.manager.acquire(list(c.key), vm_options(c))
                else:
                    sandbox, record = await v.manager.resume(record, list(c.key), vm_options(c))
                v.sandbox, v.record = sandbox, record
                try:
                    await gateway_up(c, v.manager.gateway, sandbox, c.state.get("token_budget"))
                    await sessions_up(c, v.sessions, sandbox, vm_options(c).bundles, adopted=False)
                finally:
                    # Also on success: an action may outlive the vm's on_sleep.
                    if fresh and c.engine_stopping:
                        await _give_back(c, v)
    remember(c, v.record)
    return sandbox


async def _give_back(c: ActorContext, v: VmVars) -> None:
    """A container acquired while the engine stops is removed, not kept: the vm's
    on_sleep may have run already, so nothing would record it and it would outlive
    the host (a warm-pool container left running after a clean stop)."""
    record, v.sandbox, v.record = v.record, None, None
    if record is not None:
        await asyncio.shield(v.manager.destroy(record))
    raise EngineStopped("the engine is stopping; the vm's container was not kept")


def used(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Mark the vm as in use at the start and end of the action (for idle stop).
    Works on plain action functions ``(c, ...)`` and on methods ``(self, c, ...)``."""

    @wraps(fn)
    async def wrapper(*args: Any) -> Any:
        c = args[0] if isinstance(args[0], ActorContext) else args[1]
        v = vm_vars(c)
        v.last_used = time.time()
        try:
            return await fn(*args)
        finally:
            v.last_used = time.time()

    return wrapper


# --- argument checks ----------------------------------------------------------------------


def check_command(command: Any) -> str | list[str]:
    if isinstance(command, str) and command:
        return command
    if (
        isinstance(command, list)
        and command
        and all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in command)
    ):
        return [str(a) for a in command]
    raise InvalidRequest(
        "command must be a non-empty string (run by bash -c) or a non-empty list (argv)",
        field="command",
    )


def check_path(value: Any, field: str = "path") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string", field=field)
    return value


def check_pid(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidRequest("pid must be a positive integer", field="pid")
    return value


def check_content(value: Any, field: str = "content") -> bytes | str:
    if not isinstance(value, bytes | str):
        raise InvalidRequest(f"{field} must be bytes or a string", field=field)
    return value


class VmActionsBase:
    """The host-side things every vm action group needs: the sandbox manager, the
    options a new vm gets, and the blob store ``put_blob`` reads."""

    def __init__(
        self,
        manager: SandboxManager,
        defaults: VmOptions | None = None,
        *,
        blobs: BlobStore | None = None,
    ) -> None:
        self.manager = manager
        self.defaults = defaults or manager.defaults
        self.blobs = blobs

    def create_vars(self) -> VmVars:
        return VmVars(self.manager)
