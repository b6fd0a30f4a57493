"""Child reaping for PID 1: one SIGCHLD handler waits for every child.

Orphans re-parented to PID 1 are reaped and forgotten; children we started
resolve the future registered for their pid.
"""

from __future__ import annotations

import asyncio
import os
import signal


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: dict[int, asyncio.Future[int]] = {}

    def install(self) -> None:
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def watch(self, pid: int) -> asyncio.Future[int]:
        """Future resolving to the exit code (negative signal number if killed).

        Call it right after the fork, before yielding to the loop: SIGCHLD is
        handled by a loop callback, so the child cannot be reaped before this.
        """
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiters[pid] = fut
        return fut

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            fut = self._waiters.pop(pid, None)
            # fut is None for orphans re-parented to us: reaping is all they need.
            if fut is not None and not fut.done():
                fut.set_result(code)
