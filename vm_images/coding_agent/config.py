"""Per-session settings: ``session/new`` ``_meta.agentvm`` over environment variables
over defaults (see docs/agents.md)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

DEFAULT_MODEL = "claude-sonnet-4-5"
PLACEHOLDER_KEY = "agentvm-gateway"
SESSION_HEADER = "x-agentvm-session"

DEFAULT_SYSTEM_PROMPT = """\
You are a coding agent working in a sandboxed Linux machine. You complete software
engineering tasks by inspecting and changing files and running commands with your tools.

- Working directory: {cwd}. Relative paths are resolved against it.
- Read files before editing them; make focused edits with `edit` (exact string
  replacement) and create files with `write`.
- Use `glob` and `grep` to find code, `bash` to run tests, builds and git.
- Verify your changes (run the tests) when you can.
- When done, reply with a short summary of what you changed and why.
"""


@dataclass(frozen=True)
class Config:
    model: str = DEFAULT_MODEL
    system_prompt: str | None = None  # None: the default prompt
    instructions: str | None = None
    max_turns: int = 50
    max_tokens: int = 8192
    bash_timeout: float = 120.0
    permission_mode: str = "ask"  # ask | allow
    session_header: str | None = None  # None: the ACP session id
    context_window: int = 200_000
    # Tool control (docs/sessions.md): "agent" runs the tool loop; "single_shot" sends
    # the model no tools and ends the turn after its one answer.
    mode: str = "agent"
    allowed_tools: tuple[str, ...] | None = None  # None: every tool; names or globs
    disallowed_tools: tuple[str, ...] = ()

    def system(self, cwd: str) -> str:
        base = self.system_prompt if self.system_prompt is not None else DEFAULT_SYSTEM_PROMPT
        text = base.replace("{cwd}", cwd)
        if self.instructions:
            text = f"{text.rstrip()}\n\n# Additional instructions\n\n{self.instructions.strip()}\n"
        return text


# (meta key, env var, field, converter)
_FIELDS: list[tuple[str, str, str, type]] = [
    ("model", "AGENTVM_MODEL", "model", str),
    ("systemPrompt", "AGENTVM_SYSTEM_PROMPT", "system_prompt", str),
    ("instructions", "AGENTVM_INSTRUCTIONS", "instructions", str),
    ("maxTurns", "AGENTVM_MAX_TURNS", "max_turns", int),
    ("maxTokens", "AGENTVM_MAX_TOKENS", "max_tokens", int),
    ("bashTimeout", "AGENTVM_BASH_TIMEOUT", "bash_timeout", float),
    ("permissionMode", "AGENTVM_PERMISSION_MODE", "permission_mode", str),
    ("sessionId", "AGENTVM_SESSION_ID", "session_header", str),
    ("contextWindow", "AGENTVM_CONTEXT_WINDOW", "context_window", int),
]
# Aliases accepted in _meta.agentvm.
_META_ALIASES = {"additionalInstructions": "instructions", "system_prompt": "systemPrompt"}


def from_env(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for _, var, name, conv in _FIELDS:
        raw = env.get(var)
        if raw not in (None, ""):
            values[name] = conv(raw)
    return _checked(replace(Config(), **values))


def with_meta(base: Config, meta: Mapping[str, Any] | None) -> Config:
    if not meta:
        return base
    meta = {_META_ALIASES.get(k, k): v for k, v in meta.items()}
    values: dict[str, Any] = {}
    for key, _, name, conv in _FIELDS:
        if meta.get(key) is not None:
            values[name] = conv(meta[key])
    for key, name in (("allowedTools", "allowed_tools"), ("disallowedTools", "disallowed_tools")):
        if meta.get(key) is not None:
            values[name] = _names(meta[key], key)
    if meta.get("mode") is not None:
        values["mode"] = str(meta["mode"])
    return _checked(replace(base, **values))


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of tool names")
    return tuple(value)


def _checked(config: Config) -> Config:
    if config.permission_mode not in ("ask", "allow"):
        raise ValueError(f"permissionMode must be 'ask' or 'allow', not {config.permission_mode!r}")
    if config.mode not in ("agent", "single_shot"):
        raise ValueError(f"mode must be 'agent' or 'single_shot', not {config.mode!r}")
    if config.max_turns < 1 or config.max_tokens < 1:
        raise ValueError("maxTurns and maxTokens must be positive")
    return config


def api_key(env: Mapping[str, str] | None = None) -> str:
    """The key to send; inside a sandbox the gateway replaces it with the real one."""
    env = os.environ if env is None else env
    return env.get("ANTHROPIC_API_KEY") or PLACEHOLDER_KEY


def select_tools(
    schemas: list[dict[str, Any]], allowed: tuple[str, ...] | None, disallowed: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The tools a session offers: ``allowed`` (None: all) minus ``disallowed``; each
    entry is a name, a glob (``mcp__docs__*``) or ``mcp__<server>`` for all of a
    server's tools (Claude Code's form)."""

    def hit(name: str, patterns: tuple[str, ...]) -> bool:
        return any(
            fnmatch.fnmatchcase(name, p) or (p.startswith("mcp__") and name.startswith(p + "__"))
            for p in patterns
        )

    return [
        s
        for s in schemas
        if (allowed is None or hit(s["name"], allowed)) and not hit(s["name"], disallowed)
    ]


def history_messages(value: Any) -> list[dict[str, Any]]:
    """``_meta.agentvm.history`` (``[{role, content: str}]``, from the host's stored
    transcript) as model messages: alternating, starting with the user."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("must be a list of {role, content}")
    messages: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise ValueError("each entry needs role 'user' or 'assistant'")
        if not isinstance(item.get("content"), str):
            raise ValueError("each entry's content must be a string")
        block = {"type": "text", "text": item["content"] or "(empty)"}
        if not messages and item["role"] == "assistant":
            messages.append({"role": "user", "content": [{"type": "text", "text": "(resumed)"}]})
        if messages and messages[-1]["role"] == item["role"]:
            messages[-1]["content"].append(block)
        else:
            messages.append({"role": item["role"], "content": [block]})
    return messages
