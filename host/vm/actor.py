"""The vm actor: one key = one sandbox container, with exec, processes and files.

Register it with ``setup(use={"vm": vm_actor(manager)})``; orchestrators reach it
as ``c.actors.vm.get_or_create([key], input={...options...})``. Every action takes
its positional arguments plus an optional trailing options object (what keyword
arguments of a client call become).

The actions are methods of :class:`VmActions`, grouped by concern in
``actions_lifecycle.py`` (info/start/stop), ``actions_exec.py`` (exec, processes),
``actions_files.py`` (files, directories) and ``blob_actions.py`` (put_blob); agent
sessions come from ``sessions.py``. ``actions_of`` turns the methods into the
actor's ``actions`` mapping.
"""

from __future__ import annotations

from typing import Any

from host.blobs import BlobStore
from orchestrator import ActorDefinition, actor, event
from orchestrator.definitions import actions_of

from .actions_base import sandbox_of, used, vm_vars
from .actions_checkpoints import CheckpointActions
from .actions_exec import ProcessActions
from .actions_files import FileActions
from .actions_lifecycle import LifecycleActions
from .actions_ports import PortActions, stop_watches
from .actions_pty import TerminalActions
from .blob_actions import BlobActions
from .manager import SandboxManager
from .options import VmOptions
from .sessions import session_actions


class VmActions(LifecycleActions, ProcessActions, FileActions, BlobActions, PortActions):
    """Every built-in action of the vm actor, as methods (``actions_of`` lists them)."""


def vm_actor(
    manager: SandboxManager, defaults: VmOptions | None = None, *, blobs: BlobStore | None = None
) -> ActorDefinition:
    """The vm actor type; ``defaults`` (else ``manager.defaults``) are the options a
    vm gets unless its create input overrides them. The actor type's
    ``sleep_timeout`` is ``defaults.idle_timeout`` (capped by the engine's).
    ``blobs``: the store ``put_blob`` streams uploaded blobs from (default: the one
    of the attached engine's database, which ``POST /blobs`` writes to)."""
    vm = VmActions(manager, defaults, blobs=blobs)
    sessions: dict[str, Any] = session_actions(
        lambda c: vm_vars(c).sessions, sandbox_of, manager.gateway
    )
    checkpoints = CheckpointActions(manager, sessions["close_session"])

    async def on_sleep(c: Any) -> None:
        await stop_watches(c)  # a sleeping vm has no subscribers to tell
        await vm.on_sleep(c)

    async def on_destroy(c: Any) -> None:
        await stop_watches(c)
        try:
            await vm.on_destroy(c)
        finally:  # the checkpoints go with the vm, also when its container was gone
            await checkpoints.on_destroy(c)

    definition = actor(
        create_state=vm.create_state,
        create_vars=vm.create_vars,
        actions={
            **actions_of(vm),
            **sessions,
            **actions_of(checkpoints),
            **actions_of(TerminalActions(manager, defaults)),
        },
        events={
            "process_output": event("{pid, stream, data[, data_b64]} of a spawned process"),
            "process_exit": event("{pid, exit_code}: a spawned process ended"),
            "session_event": event("{session_id, seq, kind, data}: a stored session update"),
            "file_changed": event("{watch_id, path, kind}: a change under a watched path"),
            "watch_ended": event("{watch_id, reason}: a watch stopped"),
        },
        on_wake=vm.on_wake,
        on_sleep=on_sleep,
        on_destroy=on_destroy,
        options={"sleep_timeout": vm.defaults.idle_timeout},
    )
    manager.register(definition)
    return definition


__all__ = ["VmActions", "sandbox_of", "used", "vm_actor"]
