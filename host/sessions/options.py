"""Per-session options beyond the process: MCP servers, tool control, mode.

Validated at the boundary (``parse_mcp_servers`` names the field of a bad entry:
``mcp_servers.<i>.<field>``), kept in the session's record (``resume_session`` and
``fork_session`` start the new session with the same ones) and sent to the agent in
``session/new``: MCP servers as ACP ``mcpServers``, the rest in ``_meta.agentvm``
for the bundled agent and mapped to each real agent's own ``_meta`` settings where
it has them (:func:`agent_meta`; docs/sessions.md, "Tool control").
"""

from __future__ import annotations

import re
from typing import Any, Literal

from acp.schema import EnvVariable, HttpHeader, HttpMcpServer, McpServerStdio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import InvalidRequest

SessionMode = Literal["agent", "single_shot"]
MAX_MCP_SERVERS = 16
MAX_TOOL_NAMES = 256
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
# A tool name or pattern: Claude Code's forms (`Bash`, `Bash(git:*)`, `mcp__srv__tool`)
# and shell-style globs (`mcp__srv__*`).
_TOOL = re.compile(r"^[A-Za-z0-9_*?.:()\-/ ]{1,128}$")


class McpStdioServer(BaseModel):
    """An MCP server the agent spawns inside the sandbox and speaks to over stdio."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["stdio"] = "stdio"
    name: str
    command: str = Field(min_length=1, max_length=4096)
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _server_name(value)

    def acp(self) -> McpServerStdio:
        env = [EnvVariable(name=k, value=v) for k, v in self.env.items()]
        return McpServerStdio(name=self.name, command=self.command, args=self.args, env=env)


class McpHttpServer(BaseModel):
    """An MCP server the agent reaches over streamable HTTP (from inside the sandbox:
    only loopback, or hosts the vm's egress allowlist lets through)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["http"]
    name: str
    url: str = Field(min_length=1, max_length=4096)
    headers: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _server_name(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    def acp(self) -> HttpMcpServer:
        headers = [HttpHeader(name=k, value=v) for k, v in self.headers.items()]
        return HttpMcpServer(type="http", name=self.name, url=self.url, headers=headers)


McpServer = McpStdioServer | McpHttpServer


def _server_name(value: str) -> str:
    # The name becomes part of tool names (mcp__<name>__<tool>), which the model API
    # limits to [A-Za-z0-9_-].
    if not _NAME.match(value):
        raise ValueError("must be 1-48 characters of letters, digits, '_' and '-'")
    return value


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_mcp_servers(value: Any, field: str = "mcp_servers") -> list[McpServer]:
    """Validate MCP server specs (dicts in the ACP shapes, or models); a bad entry
    raises :class:`InvalidRequest` naming ``mcp_servers.<i>.<field>``."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidRequest(f"{field} must be a list", field=field)
    if len(value) > MAX_MCP_SERVERS:
        raise InvalidRequest(f"{field}: at most {MAX_MCP_SERVERS} servers", field=field)
    out: list[McpServer] = []
    for i, item in enumerate(value):
        if isinstance(item, McpStdioServer | McpHttpServer):
            out.append(item)
            continue
        where = f"{field}.{i}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", field=where)
        kind = item.get("type", "stdio")
        model: type[McpStdioServer] | type[McpHttpServer]
        if kind == "stdio":
            model = McpStdioServer
        elif kind == "http":
            model = McpHttpServer
        else:
            raise InvalidRequest(
                f"{where}.type must be 'stdio' or 'http', not {kind!r}", field=f"{where}.type"
            )
        data = dict(item)
        for key in ("env", "headers"):
            # ACP's own shape, [{name, value}], is accepted too.
            if isinstance(data.get(key), list):
                try:
                    data[key] = {str(e["name"]): str(e["value"]) for e in data[key]}
                except (KeyError, TypeError):
                    raise InvalidRequest(
                        f"{where}.{key}: an object or a list of {{name, value}}",
                        field=f"{where}.{key}",
                    ) from None
        try:
            out.append(model.model_validate(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            name = f"{where}.{_where(first['loc'])}".rstrip(".")
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidRequest(f"invalid {name}: {msg}", field=name) from None
    names = [s.name for s in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidRequest(
                f"{field}.{i}.name: {name!r} is used twice", field=f"{field}.{i}.name"
            )
    return out


def parse_tool_names(value: Any, field: str) -> list[str] | None:
    """A list of tool names / patterns (None: no restriction)."""
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) > MAX_TOOL_NAMES:
        raise InvalidRequest(f"{field} must be a list of at most {MAX_TOOL_NAMES}", field=field)
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _TOOL.match(name):
            raise InvalidRequest(f"{field}.{i}: not a tool name: {name!r}", field=f"{field}.{i}")
    return list(value)


class SessionOptions(BaseModel):
    """What a session was created with (besides its process environment), kept in
    its record so a resumed or forked session gets the same."""

    model: str | None = None
    additional_instructions: str | None = None
    system_prompt: str | None = None
    mcp_servers: list[McpStdioServer | McpHttpServer] = Field(default_factory=list)
    allowed_tools: list[str] | None = None
    disallowed_tools: list[str] | None = None
    mode: SessionMode = "agent"


def agentvm_tool_meta(opts: SessionOptions) -> dict[str, Any]:
    """The bundled agent's ``_meta.agentvm`` keys for tool control."""
    meta: dict[str, Any] = {"mode": opts.mode}
    if opts.allowed_tools is not None:
        meta["allowedTools"] = opts.allowed_tools
    if opts.disallowed_tools:
        meta["disallowedTools"] = opts.disallowed_tools
    return meta


def agent_meta(agent_type: str, opts: SessionOptions, permission_policy: str) -> dict[str, Any]:
    """``session/new`` ``_meta`` keys (besides ``agentvm``) that carry the session's
    settings to a real agent in its own terms. See docs/sessions.md for what maps."""
    if agent_type == "claude-code":
        # claude-agent-acp passes _meta.claudeCode.options to the Claude Agent SDK's
        # query() options.
        options: dict[str, Any] = {}
        if opts.allowed_tools is not None:
            options["allowedTools"] = opts.allowed_tools
        if opts.disallowed_tools:
            options["disallowedTools"] = opts.disallowed_tools
        if opts.mode == "single_shot":
            options["maxTurns"] = 1
            options["tools"] = []  # no tools at all
        if permission_policy == "allow":
            options["permissionMode"] = "bypassPermissions"
        meta: dict[str, Any] = {"claudeCode": {"options": options}} if options else {}
        if opts.system_prompt:
            meta["systemPrompt"] = opts.system_prompt
        elif opts.additional_instructions:
            meta["systemPrompt"] = {"append": opts.additional_instructions}
        return meta
    # pi and opencode take no per-session tool settings over ACP (docs/sessions.md).
    return {}
