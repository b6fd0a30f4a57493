"""The per-sandbox listening socket the supervisor dials into."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import struct
from pathlib import Path

from vm_images.supervisor import protocol as P

from .connection import SupervisorConnection

log = logging.getLogger("agentvm.sandbox")

# An unauthenticated peer gets this long to send its hello, which may be this big;
# at most MAX_PENDING of them wait at once per sandbox (more are closed unread). The
# socket is reachable only from its own container, so this bounds what hostile code
# in a sandbox can make the host hold before it proves it is the supervisor.
HELLO_TIMEOUT = 3.0
MAX_HELLO = 4 * 1024
MAX_PENDING = 8
# Read-buffer limit of a connection before and after its hello: asyncio's reader
# buffers up to twice this before it stops reading the socket.
_HELLO_LIMIT = MAX_HELLO


class ControlServer:
    """Listens on ``<control_dir>/control.sock``; keeps the newest authenticated link.

    The directory is bind-mounted read-only into the container; the host never
    connects *into* the sandbox, so the sandbox cannot point it elsewhere.
    """

    def __init__(self, control_dir: Path, token: str) -> None:
        self.control_dir = control_dir
        self.socket_path = control_dir / P.SOCKET_NAME
        self.token = token
        self.current: SupervisorConnection | None = None
        self._changed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self.connects = 0
        self._watchers: set[asyncio.Task[None]] = set()
        # Connections that have not said a valid hello yet.
        self.pending = 0
        self.refused = 0
        # Settings of new links (deadlines); see SupervisorConnection.
        self.link_options: dict[str, float] = {}

    async def start(self) -> None:
        if self._server is not None:
            return
        self.control_dir.mkdir(parents=True, exist_ok=True)
        # Root-owned 0755 directory: the sandbox user can reach the socket, not add files.
        os.chmod(self.control_dir, 0o755)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.socket_path), limit=_HELLO_LIMIT
        )
        # connect() needs write permission on the socket; the container user is not us.
        os.chmod(self.socket_path, 0o666)

    async def close(self) -> None:
        """Stop listening and drop the link (the supervisor will keep dialling)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self.current is not None:
            await self.current.close("control server closed")
            self.current = None
        self._changed.set()

    @property
    def serving(self) -> bool:
        return self._server is not None

    def live(self) -> SupervisorConnection | None:
        conn = self.current
        return conn if conn is not None and not conn.closed.is_set() else None

    async def connection(self, timeout: float | None) -> SupervisorConnection:
        """The live link, waiting up to ``timeout`` seconds for the supervisor to dial in."""
        async with asyncio.timeout(timeout):
            while True:
                conn = self.live()
                if conn is not None:
                    return conn
                self._changed.clear()
                await self._changed.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.pending >= MAX_PENDING:
            self.refused += 1
            writer.close()
            return
        self.pending += 1
        try:
            hello = await self._read_hello(reader)
        finally:
            self.pending -= 1
        if hello is None or not self._valid_hello(hello):
            log.warning("rejected a connection on %s", self.socket_path)
            self.refused += 1
            writer.close()
            return
        # Authenticated: frames may now be up to MAX_FRAME (StreamReader has no public
        # setter for its limit; it only sets when reading pauses).
        reader._limit = P.MAX_FRAME  # type: ignore[attr-defined]
        writer.write(P.encode({"t": P.WELCOME, "ch": 0, "version": P.VERSION}))
        conn = SupervisorConnection(reader, writer, hello, **self.link_options)
        conn.start()
        old, self.current = self.current, conn
        self.connects += 1
        if old is not None:
            await old.close("replaced by a newer supervisor link")
        self._changed.set()
        watcher = asyncio.create_task(self._notify_on_close(conn))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    @staticmethod
    async def _read_hello(reader: asyncio.StreamReader) -> dict[str, object] | None:
        """The first frame, if it is small and arrives within HELLO_TIMEOUT."""
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                prefix = await reader.readexactly(8)
                body_len, head_len = struct.unpack(">II", prefix)
                if body_len > MAX_HELLO or head_len + 4 != body_len:
                    return None  # a hello has no payload
                header = json.loads(await reader.readexactly(head_len))
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError, OSError):
            return None
        return header if isinstance(header, dict) else None

    async def _notify_on_close(self, conn: SupervisorConnection) -> None:
        await conn.wait_closed()
        self._changed.set()

    def _valid_hello(self, header: dict[str, object]) -> bool:
        token = header.get("token")
        return (
            header.get("t") == P.HELLO
            and header.get("version") == P.VERSION
            and isinstance(token, str)
            and hmac.compare_digest(token.encode(), self.token.encode())
        )
