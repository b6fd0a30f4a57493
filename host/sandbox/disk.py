"""Size-limited ``/home/user``: one ext4 file system per home volume, in a sparse image
file attached to a loop device, so the *kernel* enforces each vm's disk quota.

Why a loop-mounted image (and not XFS project quotas or ``--storage-opt size``): it
works on any host file system (Docker's data here is overlay2 on ext4, which has
neither), needs no daemon configuration, and the image is one file per vm that is
easy to account, adopt and delete. Its only growth is what the sandbox writes, up to
the quota (the file is sparse; ``mkfs`` writes ~4 MiB of metadata).

Layout under the disk directory (root-owned ``0700``)::

    <volume>.img   the file system image (complete: written as .part, then renamed)
    <volume>.dev   symlink to the loop device it is attached to (/dev/loopN)

The Docker volume is a ``local`` volume with ``type=ext4, device=<volume>.dev``: the
kernel follows the symlink when Docker mounts it at container start, so the loop
device number may change (after a host reboot loop devices are gone) — :meth:`attach`
runs before every start and re-attaches the image and re-points the link.

The sandbox never sees the loop device (no ``/dev/loop*`` in the container, no
``CAP_SYS_ADMIN``); it only writes files through the mounted file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import SandboxError

log = logging.getLogger("agentvm.sandbox.disk")

UID = 1000  # the image's `user`
# Mount options of /home/user: no device files, no setuid binaries from the volume.
MOUNT_OPTIONS = "nodev,nosuid"
MIN_MB = 16  # ext4 with a journal needs a few MiB of metadata
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TOOLS = ("losetup", "mkfs.ext4", "debugfs")
# mkfs and losetup take milliseconds; a hung one must not hang the host.
_TOOL_TIMEOUT = 60.0


class DiskError(SandboxError):
    """Creating, attaching or removing a vm's disk image failed."""

    code = "disk_error"
    http_status = 500


def default_disk_dir() -> Path:
    return Path("/var/lib/agentvm/disks")


def unavailable_reason(root: Path) -> str | None:
    """Why loop-device disks cannot be used on this machine (None: they can)."""
    if os.geteuid() != 0:
        return "not running as root (losetup needs it)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (loop devices unavailable, e.g. inside a container)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install e2fsprogs mount)"
    docker_host = os.environ.get("DOCKER_HOST", "unix://")
    if not docker_host.startswith("unix://"):
        return f"the Docker engine is not local ({docker_host})"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return f"cannot create the disk directory {root}: {exc.strerror}"
    return None


def _run(*argv: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"{argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise DiskError(f"{' '.join(argv[:2])}: {proc.stderr.strip()[:300]}")
    return proc.stdout.strip()


def _mkfs(image: Path) -> None:
    """ext4 with no reserved blocks (all of the quota is the user's), the root owned by
    the sandbox user. The file is sparse, so it already reads as zeros: tell mke2fs
    (nothing to zero now, and no background inode-table zeroing after the mount,
    which would write ~160 MiB per 10 GiB); e2fsprogs < 1.47 gets lazy init instead."""
    owner = f"root_owner={UID}:{UID},nodiscard"
    try:
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            f"{owner},assume_storage_prezeroed=1",
            str(image),
        )
    except DiskError as exc:
        if "assume_storage_prezeroed" not in str(exc):
            raise
        lazy = f"{owner},lazy_itable_init=1,lazy_journal_init=1"
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", lazy, str(image))


def _backing_file(device: str) -> str | None:
    """The file a loop device is attached to (``None`` if it is free or gone)."""
    try:
        text = Path(f"/sys/block/{device}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return text.removesuffix(" (deleted)")


def _loop_devices() -> Iterator[str]:
    with contextlib.suppress(OSError):
        for entry in os.scandir("/sys/block"):
            if entry.name.startswith("loop"):
                yield entry.name


class LoopDisks:
    """The disk images of one host (blocking work runs in threads; methods are async)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        # One disk operation at a time (each takes milliseconds): two attaches of one
        # image would give two loop devices, and mounting both corrupts the file system.
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """In-process lock plus a lock file, for other host processes on this machine."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def image(self, volume: str) -> Path:
        if not _VOLUME.match(volume):
            raise DiskError(f"invalid volume name {volume!r}")
        return self.root / f"{volume}.img"

    def link(self, volume: str) -> Path:
        return self.image(volume).with_suffix(".dev")

    def driver_options(self, volume: str) -> dict[str, str]:
        """The ``local`` volume driver's options that mount this volume's disk."""
        return {"type": "ext4", "device": str(self.link(volume)), "o": MOUNT_OPTIONS}

    def exists(self, volume: str) -> bool:
        return self.image(volume).exists()

    def names(self) -> list[str]:
        """Volumes with a disk image here."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.name[: -len(".img")] for p in self.root.glob("*.img"))
        return []

    def prune(self) -> None:
        """Remove this host's directory if it holds nothing but the lock file."""
        with contextlib.suppress(OSError):
            if [p.name for p in self.root.iterdir()] == [".lock"]:
                (self.root / ".lock").unlink()
                self.root.rmdir()

    # -- async API -------------------------------------------------------------------

    async def create(self, volume: str, size_mb: int) -> Path:
        """A new empty disk of ``size_mb`` MiB, attached; returns the device link."""
        return await asyncio.to_thread(self._create, volume, size_mb)

    async def attach(self, volume: str) -> Path | None:
        """Make sure the volume's image is on a loop device and the link points to it
        (after a reboot, or a detach); None if the volume has no disk image."""
        return await asyncio.to_thread(self._attach, volume)

    async def remove(self, volume: str) -> None:
        """Detach the loop device (lazily if still mounted) and delete the image."""
        await asyncio.to_thread(self._remove, volume)

    # -- blocking work -----------------------------------------------------------------

    def _create(self, volume: str, size_mb: int) -> Path:
        image = self.image(volume)
        part = image.with_suffix(".part")
        with self._locked():
            if image.exists():
                raise DiskError(f"disk of volume {volume} already exists")
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.ftruncate(fd, max(size_mb, MIN_MB) * 2**20)  # sparse
                finally:
                    os.close(fd)
                _mkfs(part)
                # An empty root: Docker copies the image's /home/user (the skeleton)
                # into a volume only when it is empty, and mkfs made lost+found.
                _run("debugfs", "-w", "-R", "rmdir lost+found", str(part))
                os.rename(part, image)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            try:
                return self._attach_locked(volume)
            except BaseException:
                image.unlink(missing_ok=True)
                raise

    def _attach(self, volume: str) -> Path | None:
        if not self.exists(volume):
            return None
        link = self.link(volume)
        device = _link_device(link)
        if device is not None and _backing_file(device) == str(self.image(volume)):
            return link  # the usual case: nothing to do, no subprocess
        with self._locked():
            if not self.exists(volume):
                return None
            return self._attach_locked(volume)

    def _attached_to(self, volume: str) -> str | None:
        """The loop device (``loopN``) this volume's image is attached to."""
        image = str(self.image(volume))
        device = _link_device(self.link(volume))
        if device is not None and _backing_file(device) == image:
            return device
        for name in _loop_devices():
            if _backing_file(name) == image:
                return name
        return None

    def _attach_locked(self, volume: str) -> Path:
        link = self.link(volume)
        device = self._attached_to(volume)
        if device is None:
            device = Path(_run("losetup", "--find", "--show", str(self.image(volume)))).name
            log.info("attached disk of volume %s to /dev/%s", volume, device)
        if _link_device(link) != device:
            tmp = link.with_suffix(".dev.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(f"/dev/{device}")
            os.replace(tmp, link)
        return link

    def _remove(self, volume: str) -> None:
        image = self.image(volume)
        with self._locked():
            for name in list(_loop_devices()):
                if _backing_file(name) == str(image):
                    # Still mounted: the kernel detaches it when the mount goes away.
                    _run("losetup", "--detach", f"/dev/{name}")
            for path in (image, image.with_suffix(".part"), self.link(volume)):
                path.unlink(missing_ok=True)


def _link_device(link: Path) -> str | None:
    try:
        target = os.readlink(link)
    except OSError:
        return None
    name = Path(target).name
    return name if target == f"/dev/{name}" and name.startswith("loop") else None


def remove_host_disks(host_id: str, root: Path | None = None) -> list[str]:
    """Detach and delete every disk of ``host_id`` (blocking; for test clean-up and
    tools that removed that host's Docker volumes directly). Returns the volume names."""
    host_dir = (root or default_disk_dir()) / host_id
    if not host_dir.is_dir() or unavailable_reason(host_dir) is not None:
        return []
    disks = LoopDisks(host_dir)
    names = disks.names()
    for name in names:
        disks._remove(name)
    for leftover in (*host_dir.glob("*.part"), *host_dir.glob("*.dev"), host_dir / ".lock"):
        leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        host_dir.rmdir()
    return names
