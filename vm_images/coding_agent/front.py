"""The coding agent's start-up, with the standard library only.

A pre-started agent (docs/sessions.md) idles until a ``create_session`` takes it;
with ``acp`` (pydantic models) and ``anthropic`` imported it holds ~80 MiB for
nothing. So the process starts light: this module answers ``initialize`` and a
plain ``session/new`` (no MCP servers) itself, in microseconds, and imports the
real agent (:mod:`.agent`) in the background right after the session is ready —
or at once for any other request, which it then forwards unchanged. From then on
every byte of stdin goes to the ``acp`` connection through an in-process stream;
the sessions the front created are handed to the agent first.

Anything the front is unsure about (an MCP server, a bad field) goes the slow
way, to the real agent, whose answer (and error) is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import secrets
import sys
from typing import Any

from . import NAME, TITLE, __version__
from . import config as cfg
from .tools import SCHEMAS

# acp.PROTOCOL_VERSION of the bundled SDK (tests/agent/test_front.py compares).
PROTOCOL_VERSION = 1
# The longest JSON-RPC line read from stdin (acp's default limit).
STDIO_LIMIT = 50 * 2**20
READ_CHUNK = 2**16

log = logging.getLogger("coding_agent")


def initialize_result(params: dict[str, Any]) -> dict[str, Any]:
    """What ``CodingAgent.initialize`` answers, as JSON."""
    requested = params.get("protocolVersion")
    if not isinstance(requested, int) or isinstance(requested, bool):
        raise ValueError("protocolVersion")
    return {
        "protocolVersion": min(requested, PROTOCOL_VERSION),
        "agentCapabilities": {
            "loadSession": False,
            "promptCapabilities": {"image": True, "embeddedContext": True},
            "mcpCapabilities": {"http": True, "sse": False},
            "_meta": {"agentvm": {"history": True, "toolControl": True}},
        },
        "authMethods": [],
        "agentInfo": {"name": NAME, "title": TITLE, "version": __version__},
    }


class Front:
    """The requests answered before the real agent is loaded, and their sessions."""

    def __init__(self) -> None:
        self.base = cfg.from_env(dict(os.environ))
        # Sessions created here: (id, cwd, config, messages, tool schemas).
        self.sessions: list[tuple[str, str, cfg.Config, list[dict[str, Any]], Any]] = []

    def handle(self, line: bytes) -> tuple[bytes | None, bool]:
        """(the answer, or None to forward the line to the real agent; whether to
        load the real agent now)."""
        try:
            msg = json.loads(line)
            method, params, rid = msg["method"], msg.get("params") or {}, msg["id"]
            if method == "initialize":
                result = initialize_result(params)
            elif method == "session/new":
                result = self.new_session(params)
            else:
                return None, True
        except (ValueError, TypeError, KeyError, AttributeError):
            return None, True  # the real agent answers, with its own error
        reply = {"jsonrpc": "2.0", "id": rid, "result": result}
        return json.dumps(reply, separators=(",", ":")).encode() + b"\n", method != "initialize"

    def new_session(self, params: dict[str, Any]) -> dict[str, Any]:
        """``CodingAgent.new_session`` for a session without MCP servers."""
        if params.get("mcpServers"):
            raise ValueError("mcpServers")  # MCP start-up: the real agent's
        cwd = params["cwd"]
        if not isinstance(cwd, str) or not os.path.isabs(cwd) or not os.path.isdir(cwd):
            raise ValueError("cwd")
        meta = (params.get("_meta") or {}).get("agentvm")
        meta = meta if isinstance(meta, dict) else None
        config = cfg.with_meta(self.base, meta)
        messages = cfg.history_messages(meta.get("history") if meta else None)
        schemas = cfg.select_tools(list(SCHEMAS), config.allowed_tools, config.disallowed_tools)
        session_id = f"sess_{secrets.token_hex(16)}"
        self.sessions.append((session_id, cwd, config, messages, schemas))
        log.info("new session %s in %s (model %s)", session_id, cwd, config.model)
        return {"sessionId": session_id}


class _Out(asyncio.BaseProtocol):
    """stdout's write-pipe protocol, with the flow control StreamWriter.drain needs."""

    def __init__(self) -> None:
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def _drain_helper(self) -> None:
        if self._paused:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


async def _agent(front: Front, feed: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
    """Import the real agent (in a thread: the loop keeps reading stdin), give it the
    front's sessions and serve ACP on the rest of the stream."""
    mod = await asyncio.to_thread(importlib.import_module, f"{__package__}.agent")
    acp = importlib.import_module("acp")
    agent = mod.CodingAgent()
    for session_id, cwd, config, messages, schemas in front.sessions:
        session = mod.Session(id=session_id, cwd=cwd, config=config)
        session.messages = messages
        session.tool_schemas = schemas
        agent._sessions[session_id] = session
    agent._preload_sdk()  # the first prompt needs the model SDK
    try:
        # run_agent names the streams from the client's side: it writes to "input".
        await acp.run_agent(agent, input_stream=out, output_stream=feed, use_unstable_protocol=True)
    finally:
        for session in list(agent._sessions.values()):
            await session.mcp.close()


async def serve() -> None:
    """Serve ACP on this process's stdin/stdout until stdin closes."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=STDIO_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    transport, proto = await loop.connect_write_pipe(_Out, sys.stdout)
    out = asyncio.StreamWriter(transport, proto, None, loop)
    front = Front()
    feed = asyncio.StreamReader(limit=STDIO_LIMIT)
    agent: asyncio.Task[None] | None = None
    while agent is None:
        try:
            line = await stdin.readline()
        except ValueError:  # a line over the limit before any session: give up
            return
        if not line:
            return
        reply, load = front.handle(line)
        if reply is not None:
            out.write(reply)
            await out.drain()
        else:
            feed.feed_data(line)
        if load:
            agent = asyncio.create_task(_agent(front, feed, out), name="agent")
            agent.add_done_callback(lambda _: stdin.feed_eof())  # it failed or ended
    while data := await stdin.read(READ_CHUNK):
        feed.feed_data(data)
    feed.feed_eof()
    with contextlib.suppress(asyncio.CancelledError):
        await agent
