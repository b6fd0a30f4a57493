"""The per-sandbox listening socket the supervisor dials into."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from pathlib import Path

from vm_images.supervisor import protocol as P

from .connection import SupervisorConnection

log = logging.getLogger("agentvm.sandbox")

HELLO_TIMEOUT = 10.0


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

    async def start(self) -> None:
        if self._server is not None:
            return
        self.control_dir.mkdir(parents=True, exist_ok=True)
        # Root-owned 0755 directory: the sandbox user can reach the socket, not add files.
        os.chmod(self.control_dir, 0o755)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.socket_path), limit=P.MAX_FRAME
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
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                frame = await P.read_frame(reader)
        except (TimeoutError, P.ProtocolError, ConnectionError, OSError):
            frame = None
        if frame is None or not self._valid_hello(frame[0]):
            log.warning("rejected a connection on %s", self.socket_path)
            writer.close()
            return
        hello = frame[0]
        writer.write(P.encode({"t": P.WELCOME, "ch": 0, "version": P.VERSION}))
        conn = SupervisorConnection(reader, writer, hello)
        conn.start()
        old, self.current = self.current, conn
        self.connects += 1
        if old is not None:
            await old.close("replaced by a newer supervisor link")
        self._changed.set()
        watcher = asyncio.create_task(self._notify_on_close(conn))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

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
