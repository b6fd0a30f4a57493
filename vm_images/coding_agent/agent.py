"""The ACP agent: sessions, the model loop, tool calls, cancellation.

One process serves any number of sessions over one stdio connection. A
``session/prompt`` runs the loop *model request -> tool calls -> model request*
until the model ends its turn, the turn limit is reached or the client cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import acp
from acp import schema as S
from acp.helpers import (
    tool_content,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_tool_call,
)

from . import NAME, TITLE, __version__
from . import config as cfg
from .mcp_client import McpError, McpTools, connect
from .tools import KINDS, MUTATING, SCHEMAS, ToolContext, ToolResult, locations, run_tool, title

if TYPE_CHECKING:
    import anthropic

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
MODEL_RETRIES = 3
# The host's LLM gateway, as mounted in every sandbox, and the port its loopback
# forwarder listens on (vm_images/supervisor/protocol.py).
GATEWAY_SOCKET = "/run/agentvm/gateway.sock"
GATEWAY_PORT = 4141
MODEL_RETRY_DELAYS = (1.0, 2.0, 4.0)

_PERMISSION_OPTIONS = [
    S.PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
    S.PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
    S.PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
    S.PermissionOption(option_id="reject_always", name="Always reject", kind="reject_always"),
]


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    requests: int = 0

    def add(self, usage: Any) -> None:
        self.input_tokens += int(getattr(usage, "input_tokens", 0) or 0)
        self.output_tokens += int(getattr(usage, "output_tokens", 0) or 0)
        self.cache_read_tokens += int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        self.cache_creation_tokens += int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        self.requests += 1

    def meta(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheReadTokens": self.cache_read_tokens,
            "cacheCreationTokens": self.cache_creation_tokens,
            "requests": self.requests,
        }

    def acp_usage(self) -> S.Usage:
        total = (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_creation_tokens
        )
        return S.Usage(
            total_tokens=total,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_read_tokens=self.cache_read_tokens,
            cached_write_tokens=self.cache_creation_tokens,
        )


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


class IncompleteResponse(Exception):
    """The model's stream ended without a stop reason (cut short): retried."""


class Cancelled(Exception):
    """The client cancelled the prompt (e.g. answered a permission request 'cancelled')."""


class CodingAgent:
    """Implements the agent side of ACP (``acp.Agent``)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._base = cfg.from_env(self._env)
        self._conn: acp.Client | None = None
        self._sessions: dict[str, Session] = {}
        self._model: anthropic.AsyncAnthropic | None = None
        self._sdk: asyncio.Future[Any] | None = None
        self._stream_type: Any = None
        self._via_loopback = False  # True: model calls go through 127.0.0.1 (see _anthropic)

    # -- plumbing --------------------------------------------------------------------

    def on_connect(self, conn: acp.Client) -> None:
        self._conn = conn

    @property
    def client(self) -> acp.Client:
        if self._conn is None:
            raise RuntimeError("not connected")
        return self._conn

    def _preload_sdk(self) -> asyncio.Future[Any]:
        """Import ``anthropic`` in a daemon thread (it takes a second or two) from
        ``initialize`` on; a daemon, so that closing stdin ends the process at once."""
        if self._sdk is None:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Any] = loop.create_future()

            def load() -> None:
                try:
                    module = importlib.import_module("anthropic")
                except BaseException as exc:
                    loop.call_soon_threadsafe(_settle, future, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, future, module, None)

            threading.Thread(target=load, name="import-anthropic", daemon=True).start()
            self._sdk = future
        return self._sdk

    async def _anthropic(self) -> anthropic.AsyncAnthropic:
        if self._model is None:
            sdk = await asyncio.shield(self._preload_sdk())
            base_url = self._env.get("ANTHROPIC_BASE_URL") or None
            socket = None if self._via_loopback else _gateway_socket(base_url, self._env)
            http_client = None
            if socket is not None:
                # Straight to the host's gateway socket (it accepts every process of
                # this sandbox), not through the supervisor's loopback forwarder:
                # two fewer process hops per chunk each way (docs/sessions.md).
                httpx = importlib.import_module("httpx2")
                http_client = sdk.DefaultAsyncHttpxClient(
                    transport=httpx.AsyncHTTPTransport(uds=socket)
                )
            self._model = sdk.AsyncAnthropic(
                api_key=cfg.api_key(self._env), base_url=base_url, http_client=http_client
            )
        return self._model

    def _stream_cls(self, sdk: Any) -> Any:
        """``AsyncStream[RawMessageStreamEvent]``, built once (each subscript of the
        generic makes a new class)."""
        if self._stream_type is None:
            self._stream_type = sdk.AsyncStream[sdk.types.RawMessageStreamEvent]
        return self._stream_type

    async def _use_loopback(self) -> None:
        """After a connection error on the gateway socket (the host went away): the
        loopback forwarder from now on, which waits for a restarted host."""
        if not self._via_loopback:
            self._via_loopback = True
            model, self._model = self._model, None
            if model is not None:
                with contextlib.suppress(Exception):
                    await model.close()

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise acp.RequestError.invalid_params({"sessionId": f"unknown session {session_id}"})
        return session

    async def _send(self, session: Session, update: Any) -> None:
        await self.client.session_update(session_id=session.id, update=update)

    # -- ACP methods -----------------------------------------------------------------

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: S.ClientCapabilities | None = None,
        client_info: S.Implementation | None = None,
        **kwargs: Any,
    ) -> S.InitializeResponse:
        # The SDK is needed by the first prompt; a pre-started agent (docs/sessions.md)
        # has it loaded by the time its session is created.
        self._preload_sdk()
        return S.InitializeResponse(
            protocol_version=min(protocol_version, acp.PROTOCOL_VERSION),
            agent_capabilities=S.AgentCapabilities(
                load_session=False,
                prompt_capabilities=S.PromptCapabilities(embedded_context=True, image=True),
                mcp_capabilities=S.McpCapabilities(http=True, sse=False),
                # agentvm's extensions: an earlier conversation in _meta.agentvm.history
                # (resume/fork), allowedTools/disallowedTools and mode.
                field_meta={"agentvm": {"history": True, "toolControl": True}},
            ),
            agent_info=S.Implementation(name=NAME, title=TITLE, version=__version__),
            auth_methods=[],
        )

    async def authenticate(self, method_id: str, **kwargs: Any) -> S.AuthenticateResponse:
        return S.AuthenticateResponse()

    async def new_session(
        self,
        cwd: str,
        additional_directories: list[str] | None = None,
        mcp_servers: list[Any] | None = None,
        **kwargs: Any,
    ) -> S.NewSessionResponse:
        meta = kwargs.get("agentvm")
        try:
            config = cfg.with_meta(self._base, meta if isinstance(meta, dict) else None)
        except (TypeError, ValueError) as exc:
            raise acp.RequestError.invalid_params({"_meta.agentvm": str(exc)}) from exc
        if not os.path.isabs(cwd):
            raise acp.RequestError.invalid_params({"cwd": "must be an absolute path"})
        if not os.path.isdir(cwd):  # noqa: ASYNC240 (a stat, once per session)
            raise acp.RequestError.invalid_params({"cwd": f"{cwd} is not a directory"})
        session = Session(id=f"sess_{uuid.uuid4().hex}", cwd=cwd, config=config)
        try:
            session.messages = cfg.history_messages(
                meta.get("history") if isinstance(meta, dict) else None
            )
        except ValueError as exc:
            raise acp.RequestError.invalid_params({"_meta.agentvm.history": str(exc)}) from exc
        try:
            session.mcp = await connect(list(mcp_servers or ()), cwd)
        except McpError as exc:
            raise acp.RequestError.invalid_params({"mcpServers": str(exc)}) from exc
        session.tool_schemas = cfg.select_tools(
            [*SCHEMAS, *session.mcp.schemas], config.allowed_tools, config.disallowed_tools
        )
        self._sessions[session.id] = session
        self._preload_sdk()
        log.info("new session %s in %s (model %s)", session.id, cwd, config.model)
        return S.NewSessionResponse(session_id=session.id)

    async def close_session(self, session_id: str, **kwargs: Any) -> S.CloseSessionResponse:
        session = self._sessions.pop(session_id, None)
        if session is not None and session.task is not None and not session.task.done():
            session.cancelled = True
            session.task.cancel()
        if session is not None:
            await session.mcp.close()
        return S.CloseSessionResponse()

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.task is None or session.task.done():
            return
        session.cancelled = True
        session.task.cancel()

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> S.PromptResponse:
        session = self._session(session_id)
        if session.task is not None and not session.task.done():
            raise acp.RequestError.invalid_request(
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
            raise acp.RequestError.internal_error(
                {"details": f"{type(exc).__name__}: {exc}"}
            ) from exc
        used = Totals(
            input_tokens=session.totals.input_tokens - before.input_tokens,
            output_tokens=session.totals.output_tokens - before.output_tokens,
            cache_read_tokens=session.totals.cache_read_tokens - before.cache_read_tokens,
            cache_creation_tokens=session.totals.cache_creation_tokens
            - before.cache_creation_tokens,
            requests=session.totals.requests - before.requests,
        )
        return S.PromptResponse(stop_reason=stop_reason, usage=used.acp_usage())  # type: ignore[arg-type]

    # -- the loop --------------------------------------------------------------------

    async def _run(self, session: Session) -> str:
        pending: dict[str, dict[str, Any]] = {}  # tool_use id -> tool_result, this round
        try:
            single = session.config.mode == "single_shot"
            for _ in range(session.config.max_turns):
                message = await self._call_model(session)
                content = [_block_dict(b) for b in message.content]
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
            await self._send(session, update_tool_call(call_id, status="failed"))
        session.open_calls.clear()

    async def _call_model(self, session: Session) -> Any:
        """One model request, retried when the connection or the upstream failed."""
        for attempt in range(MODEL_RETRIES + 1):
            try:
                return await self._call_model_once(session)
            except Exception as exc:
                if attempt >= MODEL_RETRIES or not await self._retryable(exc):
                    raise
                sdk = await asyncio.shield(self._preload_sdk())
                if isinstance(exc, sdk.APIConnectionError):
                    await self._use_loopback()
                delay = MODEL_RETRY_DELAYS[min(attempt, len(MODEL_RETRY_DELAYS) - 1)]
                log.warning(
                    "model call failed (%s: %s); retry %d in %.0f s",
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _retryable(self, exc: Exception) -> bool:
        """Connection trouble or a 5xx/429: worth another try. A 4xx is the request's
        fault and fails the prompt at once."""
        sdk = await asyncio.shield(self._preload_sdk())
        if isinstance(exc, sdk.APIConnectionError):
            return True
        if isinstance(exc, sdk.APIStatusError):
            return exc.status_code >= 500 or exc.status_code == 429
        if isinstance(exc, IncompleteResponse):
            return True
        # A stream cut mid-body surfaces as the HTTP library's error (httpx's
        # TransportError), not wrapped by the SDK; matched by name, since the
        # library may be vendored under another module path.
        return any(
            k.__name__ == "TransportError" and "httpx" in k.__module__ for k in type(exc).__mro__
        )

    async def _call_model_once(self, session: Session) -> Any:
        client = await self._anthropic()
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
        # What client.messages.stream(...) sends, encoded here: the SDK's request
        # preparation deep-copies the whole transcript on every call (its copy_tree,
        # ~1.5 ms at 100 messages on the turn's path, growing with the conversation);
        # the transcript is plain JSON already.
        sdk = await asyncio.shield(self._preload_sdk())
        request = client.post(
            "/v1/messages",
            cast_to=sdk.types.Message,
            content=json.dumps(body, separators=(",", ":")).encode(),
            options={"headers": {**headers, "content-type": "application/json"}},
            stream=True,
            stream_cls=self._stream_cls(sdk),
        )
        async with sdk.lib.streaming.AsyncMessageStreamManager(request) as stream:
            async for event in stream:
                if event.type == "text" and event.text:
                    await self._send(session, update_agent_message_text(event.text))
                elif event.type == "thinking" and event.thinking:
                    await self._send(session, update_agent_thought_text(event.thinking))
            message = await stream.get_final_message()
        session.totals.add(message.usage)
        if message.stop_reason is None:
            raise IncompleteResponse("the model's response ended without a stop reason")
        usage = message.usage
        used = (
            int(usage.input_tokens or 0)
            + int(getattr(usage, "cache_read_input_tokens", 0) or 0)
            + int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
            + int(usage.output_tokens or 0)
        )
        await self._send(
            session,
            S.UsageUpdate(
                session_update="usage_update",
                used=used,
                size=config.context_window,
                field_meta={"agentvm": {**session.totals.meta(), "model": config.model}},
            ),
        )
        return message

    async def _announce(self, session: Session, block: dict[str, Any]) -> None:
        name, args = str(block.get("name")), block.get("input") or {}
        ctx = session.tools
        where = locations(ctx, name, args)
        session.open_calls.add(block["id"])
        await self._send(
            session,
            S.ToolCallStart(
                session_update="tool_call",
                tool_call_id=block["id"],
                title=title(ctx, name, args),
                kind=KINDS.get(name, "other"),  # type: ignore[arg-type]
                status="pending",
                raw_input=args,
                locations=[S.ToolCallLocation(path=p, line=n) for p, n in where] or None,
            ),
        )

    async def _tool_call(self, session: Session, block: dict[str, Any]) -> dict[str, Any]:
        call_id, name = block["id"], str(block.get("name"))
        args = block.get("input") or {}
        if not await self._permitted(session, block):
            result = ToolResult("The user rejected this tool call.", is_error=True)
            await self._send(
                session,
                update_tool_call(call_id, status="failed", content=[_text(result.text)]),
            )
            session.open_calls.discard(call_id)
            return _tool_result(call_id, result)
        await self._send(session, update_tool_call(call_id, status="in_progress"))
        started = time.monotonic()
        if not any(t["name"] == name for t in session.tool_schemas):
            # Not offered (disallowed, or made up by the model): never run.
            result = ToolResult(f"tool {name!r} is not available in this session", is_error=True)
        elif name in session.mcp:
            result = await session.mcp.call(name, args, max(session.config.bash_timeout, 60.0))
        else:
            result = await run_tool(session.tools, name, args)
        content: list[Any] = []
        if result.change is not None:
            change = result.change
            content.append(tool_diff_content(change.path, change.new_text, change.old_text))
        if result.text and (result.change is None or result.is_error):
            content.append(_text(result.text))
        elapsed_ms = round((time.monotonic() - started) * 1000)
        raw = {**result.raw, "output": result.text, "ms": elapsed_ms}
        await self._send(
            session,
            update_tool_call(
                call_id,
                status="failed" if result.is_error else "completed",
                content=content,
                raw_output=raw,
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
        response = await self.client.request_permission(
            session_id=session.id,
            tool_call=S.ToolCallUpdate(
                tool_call_id=block["id"],
                title=title(ctx, name, args),
                kind=KINDS.get(name, "other"),  # type: ignore[arg-type]
                status="pending",
                raw_input=args,
            ),
            options=_PERMISSION_OPTIONS,
        )
        outcome = response.outcome
        if isinstance(outcome, S.DeniedOutcome):  # the client cancelled the prompt
            raise Cancelled()
        choice = outcome.option_id
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


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _text(text: str) -> Any:
    return tool_content(acp.text_block(text))


def _block_dict(block: Any) -> dict[str, Any]:
    data: dict[str, Any] = block.model_dump(mode="json", exclude_none=True)
    if data.get("type") == "text":
        return {"type": "text", "text": data.get("text", "")}
    return data


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
    blocks: list[dict[str, Any]] = []
    for item in prompt:
        kind = getattr(item, "type", None)
        if kind == "text":
            blocks.append({"type": "text", "text": item.text})
        elif kind == "image":
            source = {"type": "base64", "media_type": item.mime_type, "data": item.data}
            blocks.append({"type": "image", "source": source})
        elif kind == "resource_link":
            blocks.append({"type": "text", "text": f"[referenced: {item.uri}] ({item.name})"})
        elif kind == "resource":
            res = item.resource
            body = getattr(res, "text", None)
            if body is None:
                body = f"(binary content, {len(getattr(res, 'blob', ''))} base64 characters)"
            wrapped = f'<context uri="{res.uri}">\n{body}\n</context>'
            blocks.append({"type": "text", "text": wrapped})
    if not blocks:
        blocks.append({"type": "text", "text": "(empty prompt)"})
    return blocks


async def serve() -> None:
    """Serve ACP on this process's stdin/stdout."""
    agent = CodingAgent()
    try:
        # use_unstable_protocol routes session/close (an unstable ACP method).
        await acp.run_agent(agent, use_unstable_protocol=True)  # type: ignore[arg-type]
    finally:
        for session in list(agent._sessions.values()):
            await session.mcp.close()
