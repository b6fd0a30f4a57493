"""Who is on the other end of a host unix socket: is it a process of *this* container?

The host listens on sockets inside each sandbox's control directory
(``gateway.sock``, ``control.sock``), bind-mounted into exactly one container. File
mode alone would let any local process (another sandbox through a shared path, a
host user) connect, so a listener checks the connecting peer instead:

1. ``SO_PEERCRED`` gives the peer's pid, translated by the kernel into the host's
   pid namespace (0 when the peer lives in a namespace we cannot see).
2. That pid belongs to the container when ``/proc/<pid>/cgroup`` names the
   container id as a path component. This holds for cgroup v1 (``/docker/<id>``,
   cgroupfs driver) and v2 (``/docker/<id>`` or ``/system.slice/docker-<id>.scope``,
   systemd driver); a sandbox cannot move itself out of its cgroup (cgroupfs is
   read-only and it has no capabilities).
3. Fallback when the cgroup does not tell (other runtimes): the peer's pid
   namespace (``/proc/<pid>/ns/pid``) equals that of the container's init pid,
   when the caller can name it.

The pid is read when we accept; a peer that exits and whose pid is reused before
we read ``/proc`` is refused or misattributed only to a process that could have
connected anyway. See docs/security.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # pid, uid, gid
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class PeerRefused(Exception):
    """The peer of a socket is not a process of the expected container."""


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process that connected ``sock`` (``SO_PEERCRED``), in our pid
    namespace; 0 when the kernel cannot translate it."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, _uid, _gid = _UCRED.unpack(raw)
    return int(pid)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(64 * 1024)
    except OSError:
        return None


def pid_in_container_cgroup(pid: int, container_id: str) -> bool:
    """True when a cgroup path of ``pid`` has the container id as (part of) a path
    component: ``/docker/<id>``, ``docker-<id>.scope``, ``/<id>``."""
    if pid <= 0 or not container_id:
        return False
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        return False
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for part in path.split("/"):
            name = part.removesuffix(".scope")
            # "<id>", "docker-<id>", "cri-containerd-<id>", "libpod-<id>"
            if name == container_id or name.endswith("-" + container_id):
                return True
    return False


def same_pid_namespace(pid: int, other: int) -> bool:
    """True when both pids exist and share a pid namespace."""
    if pid <= 0 or other <= 0:
        return False
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{other}/ns/pid")
    except OSError:
        return False


@dataclass(frozen=True)
class ContainerPeer:
    """Accepts peers that are processes of one container.

    ``container_id`` is the full 64-hex Docker id; ``init_pid`` (optional) returns
    the host pid of the container's init, for the pid-namespace fallback."""

    container_id: str
    init_pid: Callable[[], int | None] | None = None

    def __post_init__(self) -> None:
        if not _HEX64.match(self.container_id):
            raise ValueError(f"container id must be 64 hex digits: {self.container_id!r}")

    def allows_pid(self, pid: int) -> bool:
        if pid_in_container_cgroup(pid, self.container_id):
            return True
        if self.init_pid is not None:
            init = self.init_pid()
            if init is not None and same_pid_namespace(pid, init):
                return True
        return False

    def check(self, sock: socket.socket) -> int:
        """The peer's pid, or :class:`PeerRefused` naming it."""
        pid = peer_pid(sock)
        if not self.allows_pid(pid):
            raise PeerRefused(
                f"peer pid {pid} is not a process of container {self.container_id[:12]}"
            )
        return pid

    async def acheck(self, sock: socket.socket) -> int:
        """:meth:`check` off the event loop (it reads ``/proc``)."""
        return await asyncio.to_thread(self.check, sock)
