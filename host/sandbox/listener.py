"""A per-sandbox unix socket the host serves in the sandbox's control directory.

The LLM gateway and the egress proxy each listen on one (``gateway.sock``,
``egress.sock``): the directory is bind-mounted read-only into exactly one
container, whose uid must be able to connect (mode 0666), so who may use the
socket is decided per connection by a peer check (``host/sandbox/peer.py``).
Subclasses implement ``_accept`` and keep each connection's task in ``_conns``
so :meth:`close` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

# asyncio's default StreamReader limit.
DEFAULT_LIMIT = 64 * 1024


class SandboxSocketServer:
    """Start/stop a unix listener at ``socket_path`` and track its connections."""

    def __init__(self, socket_path: Path, *, limit: int = DEFAULT_LIMIT) -> None:
        self.socket_path = socket_path
        self._limit = limit
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Connections open now (accepted and not yet closed)."""
        return len(self._conns)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.socket_path), limit=self._limit
        )
        # The container user (another uid) must be able to connect; who may use the
        # socket is decided per connection by the peer check, not by the mode.
        os.chmod(self.socket_path, 0o666)

    async def close(self) -> None:
        """Stop listening, remove the socket and end every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
