"""Per-exec cgroups: the host puts each timed exec in its own cgroup inside the
container's, so a timeout kills the whole tree, ``setsid`` children included.

Sandbox code cannot leave a cgroup (``/sys/fs/cgroup`` is read-only in the container
and it has no capabilities), so membership is the one process-tree marker it cannot
shed. The supervisor starts the command behind a gate (a pipe the child reads before
it ``exec``s), announces its pid, and opens the gate only after the host moved it:
nothing the command starts can be outside the cgroup (docs/protocol.md).

cgroup v1 uses the ``pids`` hierarchy (the container's pids limit still counts the
sub-cgroup); v2 the unified one (``cgroup.kill`` when the kernel has it). Needs
write access to the container's cgroup (root on the host); without it exec runs
untracked as before.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import time
from pathlib import Path

log = logging.getLogger("agentvm.sandbox")

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Sub-cgroups left with live background processes; we retry removing a few per exec.
_RETRY_REMOVE = 8
_KILL_PASSES = 200
# Sub-cgroup names, unique across trackers: concurrent first execs of a sandbox (or a
# new supervisor boot, or a restarted host) each make a tracker, and a name two of
# them share would make the second exec's mkdir fail ("exec runs untracked").
# The random token tells apart hosts that got the same pid (a restarted host in a
# container, say), whose leftover sub-cgroups may still exist.
_NAMES = itertools.count(1)
_TOKEN = secrets.token_hex(4)


def _exec_cgroup_name() -> str:
    return f"agentvm-exec-{os.getpid()}-{_TOKEN}-{next(_NAMES)}"


def container_cgroup(init_pid: int) -> Path | None:
    """The container's cgroup directory we may create sub-cgroups in, if writable."""
    try:
        lines = Path(f"/proc/{init_pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = (CGROUP_ROOT / "cgroup.controllers").exists()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if unified and controllers == "":
            base = CGROUP_ROOT / path.lstrip("/")
        elif not unified and "pids" in controllers.split(","):
            base = CGROUP_ROOT / "pids" / path.lstrip("/")
        else:
            continue
        if base.is_dir() and os.access(base, os.W_OK):
            return base
    return None


def _ns_pid(host_pid: int) -> int | None:
    """The innermost-namespace pid of a host pid (``NSpid`` in its status)."""
    try:
        with open(f"/proc/{host_pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


class ExecTracker:
    """Creates, moves into, kills and removes per-exec cgroups of one container."""

    def __init__(self, base: Path, init_pid: int) -> None:
        self.base = base
        self.init_pid = init_pid
        self.leftover: list[Path] = []

    @classmethod
    def for_container(cls, init_pid: int) -> ExecTracker | None:
        base = container_cgroup(init_pid) if init_pid > 0 else None
        return cls(base, init_pid) if base is not None else None

    def _host_pid(self, ns_pid: int) -> int | None:
        """The host pid of the supervisor's child ``ns_pid`` (its direct child)."""
        # The supervisor forks only from its event-loop (main) thread, so its children
        # are listed there. The kernel's list may skip entries while other children
        # exit, hence the fallback. A gated child does not exit on its own before the
        # gate opens: "no process" means it was killed (or, before the stdin gate,
        # died of "Bad fd number"; docs/protocol.md).
        try:
            children = Path(f"/proc/{self.init_pid}/task/{self.init_pid}/children").read_text()
        except OSError:
            children = ""
        for raw in children.split():
            if _ns_pid(int(raw)) == ns_pid:
                return int(raw)
        # Fallback: every process of the container.
        for raw in (self.base / "cgroup.procs").read_text().split():
            if _ns_pid(int(raw)) == ns_pid:
                return int(raw)
        return None

    def move(self, ns_pid: int) -> Path:
        """Put the (gated, not yet running) child ``ns_pid`` in a fresh sub-cgroup."""
        self._tidy()
        host_pid = self._host_pid(ns_pid)
        if host_pid is None:
            raise ProcessLookupError(f"no process {ns_pid} under the supervisor")
        path = self.base / _exec_cgroup_name()
        path.mkdir()
        try:
            (path / "cgroup.procs").write_text(str(host_pid))
        except OSError:
            path.rmdir()
            raise
        return path

    def kill(self, path: Path) -> None:
        """SIGKILL everything in ``path`` (forks racing the kill included), then remove it."""
        kill_file = path / "cgroup.kill"
        if kill_file.exists():
            try:
                kill_file.write_text("1")
            except OSError:
                pass
        for _ in range(_KILL_PASSES):
            try:
                pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)  # let the killed exit (and leave the cgroup)
        self.remove(path)

    def remove(self, path: Path) -> None:
        """Remove ``path`` if empty; else remember it (background children live on)."""
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            if path not in self.leftover:
                self.leftover.append(path)

    def _tidy(self) -> None:
        for path in self.leftover[:_RETRY_REMOVE]:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            self.leftover.remove(path)

    async def amove(self, ns_pid: int) -> Path:
        return await asyncio.to_thread(self.move, ns_pid)

    async def akill(self, path: Path) -> None:
        await asyncio.to_thread(self.kill, path)

    async def aremove(self, path: Path) -> None:
        await asyncio.to_thread(self.remove, path)
