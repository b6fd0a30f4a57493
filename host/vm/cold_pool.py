"""The second pool tier: containers *created, not started*, for vms with no warm one.

A created container costs no memory (no process runs in it) but has everything that
is decided at create time done already: image, limits, network mode, environment
(egress proxy settings), labels, the per-vm control socket directory, the home
volume and its size-limited disk (``host/sandbox/disk.py``: ``mkfs`` and the
engine's first mount, which copies the image's ``/home/user``). Taking one leaves
only ``docker start``, the supervisor's dial-in and the egress proxy on the path of a
new vm (docs/vm.md, "Cold start").

Keyed like the warm pool by :meth:`VmOptions.container_key`: a vm whose options
differ from the pool's (network, limits, bundles, env) never takes one. Labelled
like the warm pool's containers (``agentvm.pool``, host id, empty key): the
manager's reaper skips them while this process lists them, and the next start's
reaper removes them after a crash (no vm actor owns them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from host.sandbox import Sandbox, SandboxError
from host.sandbox.docker_backend import CPU_SHARES

from .options import VmOptions

if TYPE_CHECKING:
    from .manager import SandboxManager

log = logging.getLogger("agentvm.vm")

# After a failed refill (e.g. Docker restarting), wait this long before retrying.
_REFILL_BACKOFF = 5.0
# close() waits this long for a creation in flight to finish (then removes it).
_CLOSE_DEADLINE = 60.0


@dataclass
class _Tier:
    """Created containers for one set of container options."""

    options: VmOptions
    size: int
    ready: deque[tuple[Sandbox, str]] = field(default_factory=deque)
    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    added: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # Shielded from the refill task's cancellation: close() waits for it.
    inflight: asyncio.Future[tuple[Sandbox, str]] | None = None


class ColdPool:
    """``size`` created containers per option set, refilled in the background."""

    def __init__(self, manager: SandboxManager, size: int, options: Sequence[VmOptions]) -> None:
        self.manager = manager
        self.size = size
        self._tiers: dict[str, _Tier] = {}
        if size > 0:
            for opts in options:
                self._tiers.setdefault(opts.container_key(), _Tier(opts, size))
        self._closed = False

    def open(self) -> None:
        """Start filling every tier in the background."""
        for tier in self._tiers.values():
            tier.wanted.set()
            tier.task = asyncio.create_task(self._refill(tier), name="vm-cold-pool-refill")

    def names(self) -> set[str]:
        """Container names waiting in the tier (the reaper skips them)."""
        return {sb.name for tier in self._tiers.values() for sb, _ in tier.ready}

    def ready(self, options: VmOptions) -> int:
        tier = self._tiers.get(options.container_key())
        return len(tier.ready) if tier else 0

    async def wait_full(self, options: VmOptions) -> None:
        """Until the tier for ``options`` holds ``size`` created containers."""
        tier = self._tiers.get(options.container_key())
        while tier is not None and len(tier.ready) < tier.size and not self._closed:
            tier.added.clear()
            await tier.added.wait()

    async def _create(self, tier: _Tier) -> tuple[Sandbox, str]:
        manager = self.manager
        image = await manager.image_for(tier.options.bundles)
        spec = manager._spec(tier.options, image, [], tier.options.pool_id())
        name = manager.backend.new_name()
        marks = {name, f"{name}-home"}
        manager._creating |= marks  # the reaper skips it meanwhile
        try:
            # Normal CPU weight: no agent is pre-started in it, and the vm that takes
            # it must not start at the warm pool's idle weight.
            sandbox = await manager.backend.create(
                spec, start=False, name=name, cpu_shares=CPU_SHARES
            )
        finally:
            manager._creating -= marks
        return sandbox, image

    async def _refill(self, tier: _Tier) -> None:
        """Keep ``tier.size`` created containers, one creation at a time."""
        while True:
            await tier.wanted.wait()
            tier.wanted.clear()
            while len(tier.ready) < tier.size and not self._closed:
                create = tier.inflight = asyncio.ensure_future(self._create(tier))
                try:
                    # Shielded: a create cancelled half-way leaks (see close()).
                    made = await asyncio.shield(create)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    tier.inflight = None
                    log.warning("cold pool refill failed (retrying): %s", exc)
                    await asyncio.sleep(_REFILL_BACKOFF)
                    continue
                tier.inflight = None
                tier.ready.append(made)
                tier.added.set()

    async def acquire(self, options: VmOptions) -> tuple[Sandbox, str] | None:
        """A created container for ``options``, started and claimed; None if the tier
        is empty (or has no tier for these options) or the start failed."""
        tier = self._tiers.get(options.container_key())
        if tier is None or not tier.ready:
            return None
        sandbox, image = tier.ready.popleft()
        tier.wanted.set()
        manager = self.manager
        # Claimed before the start: the reaper must not take it for an orphan.
        manager._claimed[sandbox.name] = sandbox
        try:
            await manager.backend.start(sandbox)
            await manager._egress_up(sandbox, manager._spec(options, image, [], None).labels)
        except BaseException as exc:
            # Removed behind our back, would not start, or the call was cancelled:
            # no vm records it, so remove it (in the background: close() waits).
            manager._claimed.pop(sandbox.name, None)
            manager._remove_later(sandbox)
            if not isinstance(exc, (SandboxError, OSError)):
                raise
            log.warning("cold pool container %s did not start: %s", sandbox.name, exc)
            return None  # the caller creates one
        return sandbox, image

    async def close(self, *, remove: bool = True) -> None:
        """Stop the refills; with ``remove``, remove every created container (and the
        one being created, once it is made)."""
        self._closed = True
        tasks = [t.task for t in self._tiers.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for tier in self._tiers.values():
            create, tier.inflight = tier.inflight, None
            if create is not None:
                try:
                    tier.ready.append(
                        await asyncio.wait_for(asyncio.shield(create), _CLOSE_DEADLINE)
                    )
                except TimeoutError:
                    create.cancel()  # the backend's own clean-up is the last resort
                    with contextlib.suppress(BaseException):
                        await create
                except Exception:
                    pass  # the failed create removed what it had made
            while remove and tier.ready:
                sandbox, _ = tier.ready.popleft()
                with contextlib.suppress(SandboxError):
                    await self.manager.backend.remove(sandbox)
