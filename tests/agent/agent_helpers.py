"""Drive the coding agent over ACP from a test: a recording ACP client, and the agent
started as a local subprocess (``python -m coding_agent`` with ``PYTHONPATH``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import acp
from acp import schema as S
from acp.client.connection import ClientSideConnection

ROOT = Path(__file__).resolve().parents[2]
AGENT_SRC = ROOT / "vm_images"


@dataclass
class RecordingClient:
    """The client side: records every ``session/update`` and answers permission requests
    with ``reply`` (an option id, or ``"cancelled"``)."""

    reply: str = "allow_once"
    updates: list[Any] = field(default_factory=list)
    permission_requests: list[tuple[Any, list[Any]]] = field(default_factory=list)

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> S.RequestPermissionResponse:
        self.permission_requests.append((tool_call, options))
        if self.reply == "cancelled":
            return S.RequestPermissionResponse(outcome=S.DeniedOutcome(outcome="cancelled"))
        return S.RequestPermissionResponse(
            outcome=S.AllowedOutcome(outcome="selected", option_id=self.reply)
        )

    # -- views -----------------------------------------------------------------------

    def of(self, kind: str) -> list[Any]:
        return [u for u in self.updates if u.session_update == kind]

    def text(self) -> str:
        return "".join(u.content.text for u in self.of("agent_message_chunk"))

    def tool_updates(self, call_id: str) -> list[Any]:
        return [
            u
            for u in self.updates
            if u.session_update in ("tool_call", "tool_call_update") and u.tool_call_id == call_id
        ]

    async def wait_for(
        self, predicate: Callable[[Any], bool], *, timeout: float = 20.0, what: str = "update"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for update in self.updates:
                if predicate(update):
                    return update
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; got {self.updates!r}")
            await asyncio.sleep(0.01)


def agent_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {"PYTHONPATH": str(AGENT_SRC), "ANTHROPIC_BASE_URL": base_url}
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def local_agent(
    client: RecordingClient, env: dict[str, str], *, stderr_path: Path
) -> AsyncIterator[ClientSideConnection]:
    """The agent as a subprocess of the test, connected and initialized."""
    with stderr_path.open("wb") as err:
        async with acp.spawn_agent_process(
            client,
            sys.executable,
            "-m",
            "coding_agent",
            env=env,
            transport_kwargs={"stderr": err.fileno()},
            use_unstable_protocol=True,
        ) as (conn, _proc):
            await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
            yield conn


class ProcessTransport:
    """An ``acp`` message transport over a sandbox process's stdin/stdout: one JSON
    object per line each way (stderr is kept for failure messages)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.stderr = bytearray()
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        buf = b""
        try:
            async for event in self.handle.events():
                if event.type != "process_output":
                    break
                if event.stream == "stderr":
                    self.stderr.extend(event.data)
                    continue
                buf += event.data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        await self._inbox.put(json.loads(line))
        finally:
            await self._inbox.put(None)

    async def send(self, message: dict[str, Any]) -> None:
        await self.handle.write_stdin(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        return await self._inbox.get()

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pump
