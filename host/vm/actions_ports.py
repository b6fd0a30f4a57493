"""The vm actor's port and file-watch actions: ``list_ports``, ``watch``, ``unwatch``,
``list_watches``.

A watch runs in the host as a task reading the supervisor's ``watch`` channel and
broadcasting each change as ``file_changed {watch_id, path, kind}`` (an ``overflow``
change says changes were dropped: rescan). At most ``MAX_WATCHES`` per vm. A watch
ends with ``unwatch``, when the vm sleeps or is destroyed (``stop_watches``), when
the sandbox link is lost, or when its path goes away; a ``watch_ended {watch_id,
reason}`` event says so.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import Any, Literal

from pydantic import Field

from host.sandbox import SandboxError
from host.sandbox.ports import list_ports, watch
from orchestrator import ActorContext
from orchestrator.definitions import action
from orchestrator.errors import InvalidRequest

from .actions_base import Opts, VmActionsBase, VmVars, check_path, sandbox_of, used, vm_vars
from .options import parse_call_options

log = logging.getLogger("agentvm.vm")

MAX_WATCHES = 16
# How long ``watch`` waits for the supervisor to start watching.
START_TIMEOUT = 30.0

# vm vars -> watch id -> its task (VmVars is shared; this keeps the watches beside it).
_watches: weakref.WeakKeyDictionary[VmVars, dict[str, asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary()
)


class WatchOptions(Opts):
    recursive: bool = True
    # "poll" forces the polling fallback (where inotify is not wanted).
    mode: Literal["auto", "inotify", "poll"] = "auto"
    interval: float | None = Field(default=None, ge=0.05, le=60)


def watches_of(v: VmVars) -> dict[str, asyncio.Task[None]]:
    return _watches.setdefault(v, {})


async def stop_watches(c: ActorContext) -> None:
    """End every watch of the vm (it goes to sleep: nobody listens any more)."""
    tasks = list(watches_of(vm_vars(c)).values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class PortActions(VmActionsBase):
    """Listening ports (for preview URLs) and file watches of the sandbox."""

    @action
    @used
    async def list_ports(self, c: ActorContext) -> list[dict[str, Any]]:
        """TCP ports listening inside the sandbox → ``[{port, address, pid, process}]``."""
        return [p.to_json() for p in await list_ports(await sandbox_of(c))]

    @action
    @used
    async def watch(self, c: ActorContext, path: Any = ".", opts: Any = None) -> dict[str, Any]:
        """Watch ``path`` (recursively) → ``{watch_id, mode, path}``; changes are
        broadcast as ``file_changed {watch_id, path, kind}``."""
        o = parse_call_options(WatchOptions, opts, "watch")
        target = check_path(path)
        if "\x00" in target:
            raise InvalidRequest("path must not contain NUL", field="path")
        v = vm_vars(c)
        watches = watches_of(v)
        if len(watches) >= MAX_WATCHES:
            raise InvalidRequest(
                f"at most {MAX_WATCHES} watches per vm; unwatch one first",
                field="path",
                watches=sorted(watches),
            )
        sandbox = await sandbox_of(c)
        watch_id = uuid.uuid4().hex[:12]
        started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            reason = "unwatched"
            try:
                async for batch in watch(
                    sandbox,
                    target,
                    recursive=o.recursive,
                    mode=o.mode,
                    interval=o.interval,
                    started=started,
                ):
                    for change in batch:
                        c.broadcast("file_changed", {"watch_id": watch_id, **change.to_json()})
                reason = "ended"
            except asyncio.CancelledError:
                raise
            except SandboxError as exc:
                reason = f"{exc.code}: {exc.message}"
                if not started.done():
                    started.set_exception(exc)
                    return
                log.info("watch %s of vm %s ended: %s", watch_id, list(c.key), exc)
            finally:
                watches.pop(watch_id, None)
                if started.done() and not started.cancelled() and started.exception() is None:
                    c.broadcast("watch_ended", {"watch_id": watch_id, "reason": reason})

        task = asyncio.create_task(run(), name=f"vm-watch-{watch_id}")
        watches[watch_id] = task
        try:
            waiting: set[asyncio.Future[Any]] = {task, started}
            # FIRST_COMPLETED: the task runs as long as the watch does.
            await asyncio.wait(waiting, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not started.done():
            task.cancel()
            raise SandboxError(f"the sandbox did not start watching {target} in time")
        info = started.result()  # raises the sandbox's error (e.g. file_not_found)
        return {"watch_id": watch_id, "mode": info["mode"], "path": info["path"]}

    @action
    @used
    async def unwatch(self, c: ActorContext, watch_id: Any) -> bool:
        """Stop a watch; ``False`` if there was none with that id (already ended)."""
        if not isinstance(watch_id, str) or not watch_id:
            raise InvalidRequest("watch_id must be a non-empty string", field="watch_id")
        task = watches_of(vm_vars(c)).pop(watch_id, None)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    @action
    async def list_watches(self, c: ActorContext) -> list[str]:
        return sorted(watches_of(vm_vars(c)))
