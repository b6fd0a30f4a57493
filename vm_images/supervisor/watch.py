"""``watch``: stream file changes under a path (created / modified / deleted).

inotify through ``ctypes`` (standard library only), recursive by adding a watch per
directory (at most ``MAX_WATCHES``); when inotify is unavailable (no instance left,
no watch left) a polling walk takes over. Changes are coalesced while they wait to
be sent (a repeat of the same path and kind as that path's last pending change is
dropped), at most ``MAX_PENDING`` wait at a time (more are counted and reported as
one ``overflow`` change: rescan), and they leave in ``data events`` frames (a JSON
array each) under the channel's credit, at most one batch per ``MIN_INTERVAL``: a
sandbox creating a million files costs neither side more than the bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import struct
from typing import Any

from .errors import OpError, from_os_error
from .link import Channel, Handler, Link, Reply
from .procs import resolve

MAX_PENDING = 1024
EVENTS_PER_FRAME = 256
MIN_INTERVAL = 0.05
MAX_WATCHES = 4096
MAX_POLL_ENTRIES = 20_000
POLL_INTERVAL = 1.0
# Watches open at once in this supervisor (each holds an inotify instance or a poller).
MAX_ACTIVE = 32

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
_EVENT = struct.Struct("iIII")

_active = 0


class Changes:
    """Changes waiting to be sent: ordered, coalesced, bounded."""

    def __init__(self, root: str, limit: int = MAX_PENDING) -> None:
        self.root = root
        self.limit = limit
        self.items: list[dict[str, Any]] = []
        self.last: dict[str, str] = {}  # path -> kind of its last pending change
        self.dropped = 0
        self.reasons: set[str] = set()
        self.ready = asyncio.Event()
        self.finished = False  # the watched path went away: send what is left, then end

    def finish(self) -> None:
        self.finished = True
        self.ready.set()

    def add(self, path: str, kind: str) -> None:
        if self.last.get(path) == kind:
            return
        if len(self.items) >= self.limit:
            self.overflow("too many changes at once")
            return
        self.items.append({"path": path, "kind": kind})
        self.last[path] = kind
        self.ready.set()

    def overflow(self, reason: str) -> None:
        self.dropped += 1
        self.reasons.add(reason)
        self.ready.set()

    def take(self) -> list[dict[str, Any]]:
        batch, self.items, self.last = self.items, [], {}
        if self.dropped:
            batch.append(
                {
                    "path": self.root,
                    "kind": "overflow",
                    "dropped": self.dropped,
                    "reason": "; ".join(sorted(self.reasons)),
                }
            )
            self.dropped, self.reasons = 0, set()
        return batch


class Inotify:
    """One inotify instance watching ``root`` (and, recursively, its directories)."""

    def __init__(self, root: str, recursive: bool, changes: Changes, max_watches: int) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.root = root
        self.recursive = recursive
        self.changes = changes
        self.max_watches = max_watches
        self.paths: dict[int, str] = {}
        self.full = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def add(self, path: str) -> bool:
        if len(self.paths) >= self.max_watches:
            self.full = True
            self.changes.overflow(f"more than {self.max_watches} directories: not all watched")
            return False
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                self.full = True
                self.changes.overflow("no inotify watch left: not all directories watched")
            elif err not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise OSError(err, os.strerror(err), path)
            return False
        self.paths[wd] = path
        return True

    def add_tree(self, top: str, report: bool) -> None:
        """Watch ``top`` and the directories under it; ``report``: what is already
        there was just created (a directory made, then filled before its watch)."""
        if not self.add(top) or not self.recursive:
            return
        visited = 0
        for dirpath, dirnames, filenames in os.walk(top):
            visited += len(dirnames) + len(filenames)
            if visited > MAX_POLL_ENTRIES:  # bounded work inside the event loop
                self.changes.overflow(f"more than {MAX_POLL_ENTRIES} entries: not all watched")
                return
            if report:
                for name in filenames:
                    self.changes.add(os.path.join(dirpath, name), "created")
            for name in dirnames:
                sub = os.path.join(dirpath, name)
                if report:
                    self.changes.add(sub, "created")
                if self.full or not self.add(sub):
                    dirnames.clear()
                    if self.full:
                        return

    def readable(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.changes.overflow("the kernel's event queue overflowed")
                continue
            base = self.paths.get(wd)
            if base is None:
                continue
            if mask & IN_IGNORED:
                self.paths.pop(wd, None)
                if base == self.root:
                    self.changes.finish()
                continue
            name = os.fsdecode(raw.rstrip(b"\x00"))
            path = os.path.join(base, name) if name else base
            if mask & (IN_CREATE | IN_MOVED_TO):
                self.changes.add(path, "created")
                if mask & IN_ISDIR and self.recursive and not self.full:
                    self.add_tree(path, report=True)
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                self.changes.add(path, "deleted")
            elif mask & IN_MODIFY:
                self.changes.add(path, "modified")
            elif mask & (IN_DELETE_SELF | IN_MOVE_SELF) and base == self.root:
                self.changes.add(path, "deleted")
                self.changes.finish()


def _snapshot(root: str, recursive: bool, limit: int) -> tuple[dict[str, tuple[int, int]], bool]:
    """path -> (mtime_ns, size) under ``root``; True if cut at ``limit`` entries."""
    seen: dict[str, tuple[int, int]] = {}
    try:
        info = os.stat(root)
    except OSError:
        return seen, False
    if not os.path.isdir(root):
        seen[root] = (info.st_mtime_ns, info.st_size)
        return seen, False
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    if len(seen) >= limit:
                        return seen, True
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    is_dir = entry.is_dir(follow_symlinks=False)
                    # A directory's own mtime changes with its entries: not a change.
                    seen[entry.path] = (
                        0 if is_dir else st.st_mtime_ns,
                        0 if is_dir else st.st_size,
                    )
                    if is_dir and recursive:
                        stack.append(entry.path)
        except OSError:
            continue
    return seen, False


def _exists(path: str) -> bool:
    return os.path.lexists(path)


async def _poll(
    root: str,
    recursive: bool,
    changes: Changes,
    interval: float,
    before: dict[str, tuple[int, int]],
) -> None:
    """The fallback: compare bounded snapshots every ``interval`` seconds (from
    ``before``, taken before ``started`` is sent: a change right after it counts)."""
    while True:
        await asyncio.sleep(interval)
        after, cut = await asyncio.to_thread(_snapshot, root, recursive, MAX_POLL_ENTRIES)
        if not _exists(root):
            for path in before:
                changes.add(path, "deleted")
            changes.add(root, "deleted")
            changes.finish()
            return
        if cut:
            changes.overflow(f"more than {MAX_POLL_ENTRIES} entries: not all polled")
        for path, sig in after.items():
            old = before.get(path)
            if old is None:
                changes.add(path, "created")
            elif old != sig:
                changes.add(path, "modified")
        if not cut:
            for path in before.keys() - after.keys():
                changes.add(path, "deleted")
        before = after


async def _send(ch: Channel, changes: Changes) -> None:
    while True:
        await changes.ready.wait()
        changes.ready.clear()
        batch = changes.take()
        for start in range(0, len(batch), EVENTS_PER_FRAME):
            frame = json.dumps(batch[start : start + EVENTS_PER_FRAME], separators=(",", ":"))
            await ch.send_data("events", frame.encode())  # waits for the host's credit
        if changes.finished and not changes.items and not changes.dropped:
            return
        await asyncio.sleep(MIN_INTERVAL)


def _number(args: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = args.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise OpError("EINVAL", f"'{key}' must be a number from {low:g} to {high:g}")
    return float(value)


def _root(raw: str) -> str:
    root = os.path.normpath(resolve(raw))
    try:
        os.stat(root)
    except OSError as exc:
        raise from_os_error(exc, root) from exc
    except ValueError as exc:  # an embedded NUL
        raise OpError("EINVAL", f"bad path: {exc}") from exc
    return root


async def op_watch(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
    global _active
    raw = args.get("path")
    if not isinstance(raw, str) or not raw:
        raise OpError("EINVAL", "'path' must be a non-empty string")
    root = _root(raw)
    recursive = args.get("recursive", True) is not False
    mode = args.get("mode", "auto")
    if mode not in ("auto", "inotify", "poll"):
        raise OpError("EINVAL", "'mode' must be 'auto', 'inotify' or 'poll'")
    interval = _number(args, "interval", POLL_INTERVAL, 0.05, 60.0)
    max_watches = int(_number(args, "max_watches", MAX_WATCHES, 1, MAX_WATCHES))
    if _active >= MAX_ACTIVE:
        raise OpError("EAGAIN", f"at most {MAX_ACTIVE} watches at once")
    _active += 1
    changes = Changes(root)
    notify: Inotify | None = None
    loop = asyncio.get_running_loop()
    source: asyncio.Task[None] | None = None
    sender = asyncio.create_task(_send(ch, changes))
    try:
        if mode != "poll":
            try:
                notify = Inotify(root, recursive, changes, max_watches)
                notify.add_tree(root, report=False)  # bounded: MAX_POLL_ENTRIES
                loop.add_reader(notify.fd, notify.readable)
            except OSError:
                if notify is not None:
                    notify.close()
                    notify = None
                if mode == "inotify":
                    raise
        if notify is None:
            before, _ = await asyncio.to_thread(_snapshot, root, recursive, MAX_POLL_ENTRIES)
            source = asyncio.create_task(_poll(root, recursive, changes, interval, before))
        await ch.send_event("started", mode="inotify" if notify is not None else "poll", path=root)
        waiting: set[asyncio.Task[None]] = {sender} | ({source} if source else set())
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if source is not None and source.done() and not sender.done():
            source.result()  # the poller failed: say so
            await sender  # the path went away: the last changes leave first
        sender.result()  # the link closed: say so
        return None, b""
    finally:
        _active -= 1
        for task in (sender, source):
            if task is not None:
                task.cancel()
        if notify is not None:
            loop.remove_reader(notify.fd)
            notify.close()


def make_handlers() -> dict[str, Handler]:
    return {"watch": op_watch}
