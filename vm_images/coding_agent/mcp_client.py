"""MCP servers of a session: a minimal client (standard library only).

The session's ``session/new`` ``mcpServers`` are connected when the session is
created: stdio servers are spawned inside the sandbox (the command, its args and
env, in the session's cwd) and spoken to with newline-delimited JSON-RPC; HTTP
servers over MCP's streamable HTTP (one POST per message, the answer as JSON or as
an SSE stream). Per server: ``initialize``, ``notifications/initialized``,
``tools/list``; each tool is offered to the model as ``mcp__<server>__<tool>`` (as
Claude Code names them) and run with ``tools/call``. The ``mcp`` package is not used:
it is not in the agent's bundle (and would add its dependencies to every image).

Every call has a deadline and every buffer a bound: a server is sandbox code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from .tools import ToolResult, clip

PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "agentvm-coding-agent", "version": "0.1.0"}
START_TIMEOUT = 30.0
MAX_LINE = 8 * 2**20  # one JSON-RPC message from a server
MAX_TOOLS = 128  # per server
MAX_DESCRIPTION = 2000
STDERR_TAIL = 4096
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class McpError(Exception):
    """A server failed to start or answered with an error."""


def _field(spec: Any, name: str, default: Any = None) -> Any:
    if isinstance(spec, dict):
        return spec.get(name, default)
    return getattr(spec, name, default)


def _pairs(items: Any) -> dict[str, str]:
    """ACP's ``[{name, value}]`` (env, headers) as a dict."""
    return {str(_field(i, "name")): str(_field(i, "value")) for i in items or ()}


class _Connection:
    """One server: JSON-RPC requests with deadlines."""

    name: str

    async def request(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        raise NotImplementedError

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def handshake(self) -> None:
        await self.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
            START_TIMEOUT,
        )
        await self.notify("notifications/initialized")


def _result(msg: dict[str, Any], method: str, server: str) -> Any:
    if "error" in msg:
        err = msg["error"] if isinstance(msg["error"], dict) else {}
        raise McpError(f"{server}: {method} failed: {err.get('message', err)}")
    return msg.get("result")


class StdioConnection(_Connection):
    def __init__(self, name: str, command: str, args: list[str], env: dict[str, str]) -> None:
        self.name, self.command, self.args, self.env = name, command, args, env
        self.proc: asyncio.subprocess.Process | None = None
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.stderr = bytearray()
        self.tasks: list[asyncio.Task[None]] = []
        self.write_lock = asyncio.Lock()

    async def start(self, cwd: str) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                cwd=cwd,
                env={**os.environ, **self.env},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=MAX_LINE,
                # In the agent's process group: the supervisor's kill of the session
                # (a killpg) ends its MCP servers too.
            )
        except OSError as exc:
            raise McpError(f"{self.name}: cannot start {self.command!r}: {exc}") from exc
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._drain())]

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self.stderr += chunk
            del self.stderr[:-STDERR_TAIL]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # servers may log to stdout by mistake
                if isinstance(msg, dict):
                    await self._dispatch(msg)
        except (ValueError, asyncio.LimitOverrunError):
            pass  # a line over MAX_LINE: the server is broken, stop reading
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(McpError(f"{self.name}: the server exited{self._tail()}"))

    def _tail(self) -> str:
        text = self.stderr.decode(errors="replace").strip()
        return f" (stderr: {text[-500:]})" if text else ""

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if "method" in msg and "id" in msg:  # a request from the server
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": msg["id"]}
            if msg["method"] == "ping":
                reply["result"] = {}
            else:
                reply["error"] = {"code": -32601, "message": "not supported by this client"}
            await self._write(reply)
        elif "id" in msg:
            fut = self.waiting.pop(msg["id"], None) if isinstance(msg["id"], int) else None
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def _write(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        async with self.write_lock:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
            await self.proc.stdin.drain()

    async def request(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        self.next_id += 1
        rid = self.next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        try:
            await self._write({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            async with asyncio.timeout(timeout):
                msg = await fut
        except TimeoutError:
            raise McpError(f"{self.name}: {method} timed out after {timeout:.0f} s") from None
        except (ConnectionError, BrokenPipeError) as exc:
            raise McpError(f"{self.name}: the server is gone{self._tail()}") from exc
        finally:
            self.waiting.pop(rid, None)
        return _result(msg, method, self.name)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            await self._write(msg)

    async def close(self) -> None:
        """Close its stdin, then TERM, then KILL (MCP's stdio shutdown)."""
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        for sig, wait in ((None, 1.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    proc.send_signal(sig)
            try:
                async with asyncio.timeout(wait):
                    await proc.wait()
                break
            except TimeoutError:
                continue
        for task in self.tasks:
            task.cancel()


class HttpConnection(_Connection):
    """Streamable HTTP: each message is a POST; the answer is JSON or an SSE stream."""

    def __init__(self, name: str, url: str, headers: dict[str, str]) -> None:
        self.name, self.url, self.headers = name, url, headers
        self.session_id: str | None = None
        self.next_id = 0

    def _post(self, msg: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        # Imported here: urllib.request (http.client, email) is a few ms of every
        # agent's start, and only HTTP MCP servers need it.
        import urllib.error
        import urllib.request

        headers = {
            **self.headers,
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": PROTOCOL_VERSION,
        }
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
        req = urllib.request.Request(
            self.url, data=json.dumps(msg).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                self.session_id = resp.headers.get("mcp-session-id") or self.session_id
                body = resp.read(MAX_LINE + 1)
                kind = resp.headers.get("content-type", "")
        except (urllib.error.URLError, OSError) as exc:
            raise McpError(f"{self.name}: {self.url}: {exc}") from exc
        if "id" not in msg or not body.strip():
            return None
        if len(body) > MAX_LINE:
            raise McpError(f"{self.name}: answer over {MAX_LINE} bytes")
        if "text/event-stream" in kind:
            for block in body.decode(errors="replace").split("\n\n"):
                data = "\n".join(
                    line[5:].strip() for line in block.splitlines() if line.startswith("data:")
                )
                with contextlib.suppress(ValueError):
                    parsed = json.loads(data)
                    if isinstance(parsed, dict) and parsed.get("id") == msg["id"]:
                        return parsed
            raise McpError(f"{self.name}: no answer to {msg.get('method')} in the stream")
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            raise McpError(f"{self.name}: not a JSON-RPC answer")
        return parsed

    async def request(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        try:
            async with asyncio.timeout(timeout + 5):
                answer = await asyncio.to_thread(self._post, msg, timeout)
        except TimeoutError:
            raise McpError(f"{self.name}: {method} timed out after {timeout:.0f} s") from None
        except ValueError as exc:
            raise McpError(f"{self.name}: bad answer to {method}: {exc}") from exc
        return _result(answer or {}, method, self.name)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        with contextlib.suppress(McpError):
            await asyncio.to_thread(self._post, msg, START_TIMEOUT)


@dataclass
class McpTools:
    """The MCP tools of one session: schemas for the model, and calls."""

    connections: list[_Connection] = field(default_factory=list)
    schemas: list[dict[str, Any]] = field(default_factory=list)
    # exposed name -> (connection, the server's own tool name)
    routes: dict[str, tuple[_Connection, str]] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.routes

    async def call(self, name: str, args: dict[str, Any], timeout: float) -> ToolResult:
        conn, tool = self.routes[name]
        try:
            result = await conn.request("tools/call", {"name": tool, "arguments": args}, timeout)
        except McpError as exc:
            return ToolResult(str(exc), is_error=True)
        if not isinstance(result, dict):
            return ToolResult(f"{conn.name}: tools/call answered no result", is_error=True)
        text = _content_text(result)
        raw = {"mcp_server": conn.name, "tool": tool}
        return ToolResult(clip(text), is_error=bool(result.get("isError")), raw=raw)

    async def close(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(Exception):
                await conn.close()
        self.connections.clear()


def _content_text(result: dict[str, Any]) -> str:
    parts: list[str] = []
    for item in result.get("content") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            parts.append(str(item.get("text", "")))
        elif kind == "resource" and isinstance(item.get("resource"), dict):
            res = item["resource"]
            parts.append(str(res.get("text") or f"(resource {res.get('uri')})"))
        else:
            parts.append(f"({kind} content)")
    if not parts and result.get("structuredContent") is not None:
        parts.append(json.dumps(result["structuredContent"]))
    return "\n".join(parts) or "(no output)"


def tool_name(server: str, tool: str) -> str:
    """``mcp__<server>__<tool>``, within the model API's name rules (64 characters)."""
    return _SAFE.sub("_", f"mcp__{server}__{tool}")[:64]


async def connect(servers: list[Any], cwd: str) -> McpTools:
    """Start and list the tools of every server; McpError names a server that fails
    (the others are closed again)."""
    out = McpTools()
    try:
        for spec in servers:
            name = str(_field(spec, "name"))
            conn: _Connection
            if _field(spec, "url") is not None:
                conn = HttpConnection(
                    name, str(_field(spec, "url")), _pairs(_field(spec, "headers"))
                )
            else:
                command = str(_field(spec, "command"))
                args = [str(a) for a in _field(spec, "args") or ()]
                conn = StdioConnection(name, command, args, _pairs(_field(spec, "env")))
                await conn.start(cwd)
            out.connections.append(conn)
            await conn.handshake()
            listed = await conn.request("tools/list", {}, START_TIMEOUT)
            tools = listed.get("tools") if isinstance(listed, dict) else None
            for tool in (tools or [])[:MAX_TOOLS]:
                if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                    continue
                exposed = tool_name(name, tool["name"])
                schema = tool.get("inputSchema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    schema = {"type": "object", "properties": {}}
                desc = str(tool.get("description") or f"{tool['name']} (MCP server {name})")
                out.schemas.append(
                    {
                        "name": exposed,
                        "description": desc[:MAX_DESCRIPTION],
                        "input_schema": schema,
                    }
                )
                out.routes[exposed] = (conn, tool["name"])
    except BaseException:
        await out.close()
        raise
    return out
