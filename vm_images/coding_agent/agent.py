"""The ACP agent: sessions, the model loop, tool calls, cancellation.

One process serves any number of sessions over one stdio connection. A
``session/prompt`` runs the loop *model request -> tool calls -> model request*
until the model ends its turn, the turn limit is reached or the client cancels.

Standard library only (:mod:`.rpc` for ACP's JSON-RPC, :mod:`.model` for the
Messages API): the whole agent loads in a few tens of milliseconds and idles at
~12 MiB, so a pre-started agent is ready for its first prompt (docs/sessions.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import NAME, TITLE, __version__
from . import config as cfg
from . import model as api
from .mcp_client import McpError, McpTools, connect
from .rpc import Connection, RequestError, stdio
from .tools import KINDS, MUTATING, SCHEMAS, ToolContext, ToolResult, locations, run_tool, title

# The ACP protocol version spoken (acp.PROTOCOL_VERSION of the SDK it was built on).
PROTOCOL_VERSION = 1

log = logging.getLogger("coding_agent")

_STOP_REASONS: dict[str | None, str] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "max_tokens": "max_tokens",
    "refusal": "refusal",
    "model_context_window_exceeded": "max_tokens",
}

# A model call that fails after the SDK's own retries (which do not cover a response
# cut mid-stream, e.g. by the host restarting under the gateway) is tried again this
# many times, after these pauses; the loopback gateway forwarder waits for a host
# that went away, so one retry normally reaches the restarted host.
MODEL_RETRIES = 5
# The host's LLM gateway, as mounted in every sandbox, and the port its loopback
# forwarder listens on (vm_images/supervisor/protocol.py).
GATEWAY_SOCKET = "/run/agentvm/gateway.sock"
GATEWAY_PORT = 4141
MODEL_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
# The longest pause a server's retry-after may impose on one retry.
MAX_RETRY_AFTER = 60.0

_PERMISSION_OPTIONS = [
    {"optionId": "allow_once", "name": "Allow", "kind": "allow_once"},
    {"optionId": "allow_always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "reject_once", "name": "Reject", "kind": "reject_once"},
    {"optionId": "reject_always", "name": "Always reject", "kind": "reject_always"},
]


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    requests: int = 0

    def add(self, usage: dict[str, Any]) -> None:
        self.input_tokens += int(usage.get("input_tokens") or 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)
        self.cache_read_tokens += int(usage.get("cache_read_input_tokens") or 0)
        self.cache_creation_tokens += int(usage.get("cache_creation_input_tokens") or 0)
        self.requests += 1

    def meta(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheReadTokens": self.cache_read_tokens,
            "cacheCreationTokens": self.cache_creation_tokens,
            "requests": self.requests,
        }

    def acp_usage(self) -> dict[str, int]:
        total = (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_creation_tokens
        )
        return {
            "totalTokens": total,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cachedReadTokens": self.cache_read_tokens,
            "cachedWriteTokens": self.cache_creation_tokens,
        }


@dataclass
class Session:
    id: str
    cwd: str
    config: cfg.Config
    messages: list[dict[str, Any]] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    task: asyncio.Task[str] | None = None
    cancelled: bool = False
    # Tool calls announced but not finished (marked failed on cancel).
    open_calls: set[str] = field(default_factory=set)
    # Permission decisions remembered for the session: tool name -> allow?
    remembered: dict[str, bool] = field(default_factory=dict)
    mcp: McpTools = field(default_factory=McpTools)
    # The tools offered to the model (built-in and MCP, after allowed/disallowed).
    tool_schemas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tools(self) -> ToolContext:
        return ToolContext(cwd=self.cwd, bash_timeout=self.config.bash_timeout)


class IncompleteResponse(api.ModelError):
    """The model's stream ended without a stop reason (cut short): retried."""


class Cancelled(Exception):
    """The client cancelled the prompt (e.g. answered a permission request 'cancelled')."""


class CodingAgent:
    """The agent side of ACP: one handler per method, on a :class:`Connection`."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._base = cfg.from_env(self._env)
        self._conn: Connection | None = None
        self._sessions: dict[str, Session] = {}
        self._model: api.ModelClient | None = None
        self._via_loopback = False  # True: model calls go through 127.0.0.1 (see _client)

    # -- plumbing --------------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        """The ACP methods served (``session/cancel`` is a notification)."""
        return {
            "initialize": self._initialize,
            "authenticate": self._authenticate,
            "session/new": self._new_session,
            "session/close": self._close_session,
            "session/prompt": self._prompt,
            "session/cancel": self._cancel,
        }

    @property
    def client(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("not connected")
        return self._conn

    def _client(self) -> api.ModelClient:
        if self._model is None:
            base_url = self._env.get("ANTHROPIC_BASE_URL") or None
            # Straight to the host's gateway socket (it accepts every process of this
            # sandbox), not through the supervisor's loopback forwarder: two fewer
            # process hops per chunk each way (docs/sessions.md).
            socket = None if self._via_loopback else _gateway_socket(base_url, self._env)
            self._model = api.ModelClient(base_url, cfg.api_key(self._env), socket)
        return self._model

    async def _use_loopback(self) -> None:
        """After a connection error on the gateway socket (the host went away): the
        loopback forwarder from now on, which waits for a restarted host."""
        if not self._via_loopback:
            self._via_loopback = True
            model, self._model = self._model, None
            if model is not None:
                await model.close()

    def _session(self, session_id: Any) -> Session:
        session = self._sessions.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise RequestError.invalid_params({"sessionId": f"unknown session {session_id}"})
        return session

    async def _send(self, session: Session, update: dict[str, Any]) -> None:
        await self.client.notify("session/update", {"sessionId": session.id, "update": update})

    # -- ACP methods -----------------------------------------------------------------

    async def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.initialize(params.get("protocolVersion"))

    def initialize(self, protocol_version: Any) -> dict[str, Any]:
        if not isinstance(protocol_version, int) or isinstance(protocol_version, bool):
            raise RequestError.invalid_params({"protocolVersion": "must be an integer"})
        return {
            "protocolVersion": min(protocol_version, PROTOCOL_VERSION),
            "agentCapabilities": {
                "loadSession": False,
                "promptCapabilities": {"image": True, "embeddedContext": True},
                "mcpCapabilities": {"http": True, "sse": False},
                # agentvm's extensions: an earlier conversation in _meta.agentvm.history
                # (resume/fork), allowedTools/disallowedTools and mode.
                "_meta": {"agentvm": {"history": True, "toolControl": True}},
            },
            "authMethods": [],
            "agentInfo": {"name": NAME, "title": TITLE, "version": __version__},
        }

    async def _authenticate(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _new_session(self, params: dict[str, Any]) -> dict[str, Any]:
        cwd, mcp_servers = params.get("cwd"), params.get("mcpServers") or []
        meta = (
            (params.get("_meta") or {}).get("agentvm")
            if isinstance(params.get("_meta"), dict)
            else None
        )
        try:
            config = cfg.with_meta(self._base, meta if isinstance(meta, dict) else None)
        except (TypeError, ValueError) as exc:
            raise RequestError.invalid_params({"_meta.agentvm": str(exc)}) from exc
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise RequestError.invalid_params({"cwd": "must be an absolute path"})
        if not os.path.isdir(cwd):  # noqa: ASYNC240 (a stat, once per session)
            raise RequestError.invalid_params({"cwd": f"{cwd} is not a directory"})
        if not isinstance(mcp_servers, list):
            raise RequestError.invalid_params({"mcpServers": "must be a list"})
        # os.urandom, not secrets: that imports hashlib/hmac (libcrypto) at start-up.
        session = Session(id=f"sess_{os.urandom(16).hex()}", cwd=cwd, config=config)
        try:
            session.messages = cfg.history_messages(
                meta.get("history") if isinstance(meta, dict) else None
            )
        except ValueError as exc:
            raise RequestError.invalid_params({"_meta.agentvm.history": str(exc)}) from exc
        try:
            session.mcp = await connect(mcp_servers, cwd)
        except McpError as exc:
            raise RequestError.invalid_params({"mcpServers": str(exc)}) from exc
        session.tool_schemas = cfg.select_tools(
            [*SCHEMAS, *session.mcp.schemas], config.allowed_tools, config.disallowed_tools
        )
        self._sessions[session.id] = session
        log.info("new session %s in %s (model %s)", session.id, cwd, config.model)
        return {"sessionId": session.id}

    async def _close_session(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self._sessions.pop(params.get("sessionId"), None)  # type: ignore[arg-type]
        if session is not None and session.task is not None and not session.task.done():
            session.cancelled = True
            session.task.cancel()
        if session is not None:
            await session.mcp.close()
        return {}

    async def _cancel(self, params: dict[str, Any]) -> None:
        session = self._sessions.get(params.get("sessionId"))  # type: ignore[arg-type]
        if session is None or session.task is None or session.task.done():
            return
        session.cancelled = True
        session.task.cancel()

    async def _prompt(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session(params.get("sessionId"))
        prompt = params.get("prompt")
        if not isinstance(prompt, list):
            raise RequestError.invalid_params({"prompt": "must be a list of content blocks"})
        if session.task is not None and not session.task.done():
            raise RequestError.invalid_request(
                {"sessionId": "a prompt is already running in this session"}
            )
        before = Totals(**vars(session.totals))
        session.cancelled = False
        _append_user(session.messages, _prompt_blocks(prompt))
        session.task = asyncio.create_task(self._run(session))
        try:
            stop_reason = await asyncio.shield(session.task)
        except asyncio.CancelledError:
            # Our own request handler was cancelled (connection closing): stop the turn.
            session.task.cancel()
            raise
        except Exception as exc:
            log.exception("prompt failed in session %s", session.id)
            raise RequestError.internal_error({"details": f"{type(exc).__name__}: {exc}"}) from exc
        used = Totals(
            input_tokens=session.totals.input_tokens - before.input_tokens,
            output_tokens=session.totals.output_tokens - before.output_tokens,
            cache_read_tokens=session.totals.cache_read_tokens - before.cache_read_tokens,
            cache_creation_tokens=session.totals.cache_creation_tokens
            - before.cache_creation_tokens,
            requests=session.totals.requests - before.requests,
        )
        return {"stopReason": stop_reason, "usage": used.acp_usage()}

    # -- the loop --------------------------------------------------------------------

    async def _run(self, session: Session) -> str:
        pending: dict[str, dict[str, Any]] = {}  # tool_use id -> tool_result, this round
        try:
            single = session.config.mode == "single_shot"
            for _ in range(session.config.max_turns):
                message = await self._call_model(session)
                content = message.content
                tool_uses = [b for b in content if b.get("type") == "tool_use"]
                if single:  # one answer: no tools were offered, none is run
                    content = [b for b in content if b.get("type") != "tool_use"] or [
                        {"type": "text", "text": "(no answer)"}
                    ]
                    session.messages.append({"role": "assistant", "content": content})
                    return _STOP_REASONS.get(message.stop_reason, "end_turn")
                session.messages.append({"role": "assistant", "content": content})
                if message.stop_reason != "tool_use" or not tool_uses:
                    return _STOP_REASONS.get(message.stop_reason, "end_turn")
                pending = {b["id"]: _cancelled_result(b["id"]) for b in tool_uses}
                for block in tool_uses:
                    await self._announce(session, block)
                for block in tool_uses:
                    pending[block["id"]] = await self._tool_call(session, block)
                session.messages.append({"role": "user", "content": list(pending.values())})
                pending = {}
            return "max_turn_requests"
        except (asyncio.CancelledError, Cancelled):
            await self._abandon(session, pending)
            return "cancelled"
        except Exception:
            await self._abandon(session, pending)
            raise

    async def _abandon(self, session: Session, pending: dict[str, dict[str, Any]]) -> None:
        """Leave the history valid (every tool_use gets a tool_result) and close open calls."""
        if pending:
            session.messages.append({"role": "user", "content": list(pending.values())})
        for call_id in sorted(session.open_calls):
            await self._send(session, _tool_update(call_id, status="failed"))
        session.open_calls.clear()

    async def _call_model(self, session: Session) -> api.Message:
        """One model request, retried when the connection or the upstream failed."""
        for attempt in range(MODEL_RETRIES + 1):
            try:
                return await self._call_model_once(session)
            except api.ModelError as exc:
                if attempt >= MODEL_RETRIES or not _retryable(exc):
                    raise
                if isinstance(exc, api.APIConnectionError):
                    await self._use_loopback()
                delay = MODEL_RETRY_DELAYS[min(attempt, len(MODEL_RETRY_DELAYS) - 1)]
                if isinstance(exc, api.APIStatusError) and exc.retry_after is not None:
                    delay = min(max(exc.retry_after, 0.0), MAX_RETRY_AFTER)
                log.warning(
                    "model call failed (%s: %s); retry %d in %.1f s",
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _call_model_once(self, session: Session) -> api.Message:
        config = session.config
        headers = {cfg.SESSION_HEADER: config.session_header or session.id}
        # single_shot: no tools at all (the request has no `tools`).
        tools = {} if config.mode == "single_shot" else {"tools": session.tool_schemas}
        body = {
            "max_tokens": config.max_tokens,
            "messages": session.messages,
            "model": config.model,
            "system": config.system(session.cwd),
            **tools,
            "stream": True,
        }

        async def on_delta(kind: str, text: str) -> None:
            update = "agent_message_chunk" if kind == "text" else "agent_thought_chunk"
            content = {"type": "text", "text": text}
            await self._send(session, {"sessionUpdate": update, "content": content})

        encoded = json.dumps(body, separators=(",", ":")).encode()
        message = await self._client().stream(encoded, headers, on_delta)
        session.totals.add(message.usage)
        if message.stop_reason is None:
            raise IncompleteResponse("the model's response ended without a stop reason")
        usage = message.usage
        used = sum(
            int(usage.get(k) or 0)
            for k in (
                "input_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
                "output_tokens",
            )
        )
        await self._send(
            session,
            {
                "sessionUpdate": "usage_update",
                "used": used,
                "size": config.context_window,
                "_meta": {"agentvm": {**session.totals.meta(), "model": config.model}},
            },
        )
        return message

    async def _announce(self, session: Session, block: dict[str, Any]) -> None:
        name, args = str(block.get("name")), block.get("input") or {}
        ctx = session.tools
        where = locations(ctx, name, args)
        session.open_calls.add(block["id"])
        update: dict[str, Any] = {
            "sessionUpdate": "tool_call",
            "toolCallId": block["id"],
            "title": title(ctx, name, args),
            "kind": KINDS.get(name, "other"),
            "status": "pending",
            "rawInput": args,
        }
        if where:
            update["locations"] = [
                {"path": p} if n is None else {"path": p, "line": n} for p, n in where
            ]
        await self._send(session, update)

    async def _tool_call(self, session: Session, block: dict[str, Any]) -> dict[str, Any]:
        call_id, name = block["id"], str(block.get("name"))
        args = block.get("input") or {}
        if not await self._permitted(session, block):
            result = ToolResult("The user rejected this tool call.", is_error=True)
            await self._send(
                session, _tool_update(call_id, status="failed", content=[_text(result.text)])
            )
            session.open_calls.discard(call_id)
            return _tool_result(call_id, result)
        await self._send(session, _tool_update(call_id, status="in_progress"))
        started = time.monotonic()
        if not any(t["name"] == name for t in session.tool_schemas):
            # Not offered (disallowed, or made up by the model): never run.
            result = ToolResult(f"tool {name!r} is not available in this session", is_error=True)
        elif name in session.mcp:
            result = await session.mcp.call(name, args, max(session.config.bash_timeout, 60.0))
        else:
            result = await run_tool(session.tools, name, args)
        content: list[dict[str, Any]] = []
        if result.change is not None:
            change = result.change
            diff = {"type": "diff", "path": change.path, "newText": change.new_text}
            if change.old_text is not None:
                diff["oldText"] = change.old_text
            content.append(diff)
        if result.text and (result.change is None or result.is_error):
            content.append(_text(result.text))
        elapsed_ms = round((time.monotonic() - started) * 1000)
        raw = {**result.raw, "output": result.text, "ms": elapsed_ms}
        await self._send(
            session,
            _tool_update(
                call_id,
                status="failed" if result.is_error else "completed",
                content=content,
                rawOutput=raw,
            ),
        )
        session.open_calls.discard(call_id)
        return _tool_result(call_id, result)

    async def _permitted(self, session: Session, block: dict[str, Any]) -> bool:
        name = str(block.get("name"))
        mutating = name in MUTATING or name in session.mcp  # MCP tools may do anything
        if session.config.permission_mode == "allow" or not mutating:
            return True
        if name in session.remembered:
            return session.remembered[name]
        ctx, args = session.tools, block.get("input") or {}
        response = await self.client.request(
            "session/request_permission",
            {
                "sessionId": session.id,
                "toolCall": {
                    "toolCallId": block["id"],
                    "title": title(ctx, name, args),
                    "kind": KINDS.get(name, "other"),
                    "status": "pending",
                    "rawInput": args,
                },
                "options": _PERMISSION_OPTIONS,
            },
        )
        outcome = response.get("outcome") if isinstance(response, dict) else None
        if not isinstance(outcome, dict) or outcome.get("outcome") != "selected":
            raise Cancelled()  # the client cancelled the prompt
        choice = outcome.get("optionId")
        if choice == "allow_always":
            session.remembered[name] = True
        elif choice == "reject_always":
            session.remembered[name] = False
        return choice in ("allow_once", "allow_always")


# -- message helpers -----------------------------------------------------------------


def _gateway_socket(base_url: str | None, env: dict[str, str]) -> str | None:
    """The host's gateway socket when the model URL is the sandbox's loopback gateway
    (``http://127.0.0.1:<AGENTVM_GATEWAY_PORT>``, the supervisor's default) and the
    socket (``AGENTVM_GATEWAY_SOCKET``, default the mounted one) is there; else None
    (a URL of the caller's choosing is used as given)."""
    port = env.get("AGENTVM_GATEWAY_PORT") or str(GATEWAY_PORT)
    if base_url is None or base_url.rstrip("/") != f"http://127.0.0.1:{port}":
        return None
    path = env.get("AGENTVM_GATEWAY_SOCKET") or GATEWAY_SOCKET
    return path if os.path.exists(path) else None


def _retryable(exc: api.ModelError) -> bool:
    """Connection trouble, a cut stream or a 5xx/429: worth another try. A 4xx is the
    request's fault and fails the prompt at once."""
    if isinstance(exc, api.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    return True


def _text(text: str) -> dict[str, Any]:
    return {"type": "content", "content": {"type": "text", "text": text}}


def _tool_update(call_id: str, **fields: Any) -> dict[str, Any]:
    return {"sessionUpdate": "tool_call_update", "toolCallId": call_id, **fields}


def _tool_result(call_id: str, result: ToolResult) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "content": result.text}
    if result.is_error:
        out["is_error"] = True
    return out


def _cancelled_result(call_id: str) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "tool_use_id": call_id,
        "content": "Cancelled by the user before it ran to completion.",
        "is_error": True,
    }


def _append_user(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    """Add user content, merging into a trailing user message (after a cancel or the turn
    limit the history ends with tool results)."""
    if messages and messages[-1]["role"] == "user":
        content = messages[-1]["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        messages[-1]["content"] = [*content, *blocks]
    else:
        messages.append({"role": "user", "content": blocks})


def _prompt_blocks(prompt: list[Any]) -> list[dict[str, Any]]:
    """ACP content blocks (JSON) as the model's user content."""
    blocks: list[dict[str, Any]] = []
    for item in prompt:
        if not isinstance(item, dict):
            raise RequestError.invalid_params({"prompt": "content blocks must be objects"})
        kind = item.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": str(item.get("text", ""))})
        elif kind == "image":
            source = {
                "type": "base64",
                "media_type": item.get("mimeType"),
                "data": item.get("data"),
            }
            blocks.append({"type": "image", "source": source})
        elif kind == "resource_link":
            link = f"[referenced: {item.get('uri')}] ({item.get('name')})"
            blocks.append({"type": "text", "text": link})
        elif kind == "resource":
            res = item.get("resource")
            res = res if isinstance(res, dict) else {}
            body = res.get("text")
            if body is None:
                body = f"(binary content, {len(str(res.get('blob', '')))} base64 characters)"
            wrapped = f'<context uri="{res.get("uri")}">\n{body}\n</context>'
            blocks.append({"type": "text", "text": wrapped})
    if not blocks:
        blocks.append({"type": "text", "text": "(empty prompt)"})
    return blocks


async def serve() -> None:
    """Serve ACP on this process's stdin/stdout until stdin closes."""
    agent = CodingAgent()
    reader, writer = await stdio()
    agent._conn = Connection(reader, writer, agent.handlers())
    try:
        await agent._conn.serve()
    finally:
        for session in list(agent._sessions.values()):
            await session.mcp.close()
        if agent._model is not None:
            await agent._model.close()
