"""A session's conversation, rebuilt from its stored events (resume, fork, compaction).

The store already holds everything a conversation needs: each ``prompt`` event (the
user's text), the agent's ``agent_message_chunk`` updates (its answer), its
``tool_call`` / ``tool_call_update`` updates (what it ran and what came back) and the
``prompt_end``. :func:`conversation` turns them into model messages — one user and one
assistant message per turn, tool calls summarised as text in the assistant's message
(tool names and ids are the agent's business; text works for any model API) — which
``resume_session`` / ``fork_session`` hand to the bundled agent in
``_meta.agentvm.history``. A resumed session's own log starts with a ``history``
event holding its predecessor's conversation, so a chain of resumes keeps it all.

:func:`compact` is what survives ``AGENTVM_SESSION_RETENTION``: the same messages
plus a per-turn summary, without the streaming chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .models import SessionEvent

# What a history may hold: the newest turns up to this many characters are kept
# (older ones are replaced by a note), and each tool output is cut to TOOL_CHARS.
HISTORY_MAX_CHARS = 400_000
TOOL_CHARS = 2_000
INPUT_CHARS = 500


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more]"


def _tool_output(update: dict[str, Any]) -> str:
    raw = update.get("rawOutput")
    if isinstance(raw, dict) and isinstance(raw.get("output"), str):
        return raw["output"]
    texts = []
    for item in update.get("content") or []:
        if not isinstance(item, dict):
            continue
        inner = item.get("content")
        if item.get("type") == "content" and isinstance(inner, dict):
            texts.append(str(inner.get("text", "")))
        elif item.get("type") == "diff":
            texts.append(f"(changed {item.get('path')})")
    return "\n".join(t for t in texts if t)


class _Turn:
    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.text: list[str] = []
        self.tools: dict[str, dict[str, Any]] = {}
        self.stop_reason: str | None = None

    def update(self, data: dict[str, Any]) -> None:
        kind = data.get("sessionUpdate")
        if kind == "agent_message_chunk":
            content = data.get("content")
            if isinstance(content, dict) and content.get("type") == "text":
                self.text.append(str(content.get("text", "")))
        elif kind == "tool_call":
            call = str(data.get("toolCallId"))
            self.tools[call] = {
                "title": str(data.get("title") or data.get("kind") or "tool"),
                "input": data.get("rawInput"),
                "status": data.get("status") or "pending",
                "output": "",
            }
        elif kind == "tool_call_update":
            tool = self.tools.get(str(data.get("toolCallId")))
            if tool is not None and data.get("status") in ("completed", "failed"):
                tool["status"] = data["status"]
                tool["output"] = _clip(_tool_output(data), TOOL_CHARS)

    def summary(self) -> dict[str, Any]:
        tools = [
            {
                "title": t["title"],
                "input": _clip(json.dumps(t["input"]), INPUT_CHARS) if t["input"] else "",
                "status": t["status"],
                "output": t["output"],
            }
            for t in self.tools.values()
        ]
        return {
            "prompt": self.prompt,
            "text": "".join(self.text),
            "tools": tools,
            "stop_reason": self.stop_reason,
        }


def _messages(turn: dict[str, Any]) -> list[dict[str, Any]]:
    lines = []
    for tool in turn["tools"]:
        head = f"[tool {tool['title']}"
        head += f" {tool['input']}]" if tool["input"] else "]"
        lines.append(
            f"{head} → {tool['status']}" + (f":\n{tool['output']}" if tool["output"] else "")
        )
    if turn["text"]:
        lines.append(turn["text"])
    answer = "\n".join(lines) or f"(no answer: {turn.get('stop_reason') or 'interrupted'})"
    return [
        {"role": "user", "content": turn["prompt"] or "(empty prompt)"},
        {"role": "assistant", "content": answer},
    ]


def turns(events: Iterable[SessionEvent]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(earlier messages, turn summaries)``: the messages a ``history`` or
    ``transcript`` event carries, and one summary per ``prompt`` after them."""
    earlier: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    current: _Turn | None = None
    for event in events:
        if event.kind in ("history", "transcript"):
            messages = event.data.get("messages")
            if isinstance(messages, list):
                earlier.extend(m for m in messages if _valid(m))
        elif event.kind == "prompt":
            if current is not None:
                out.append(current.summary())
            current = _Turn(str(event.data.get("text", "")))
        elif current is None:
            continue
        elif event.kind == "update":
            current.update(event.data)
        elif event.kind == "prompt_end":
            current.stop_reason = str(event.data.get("stop_reason"))
            out.append(current.summary())
            current = None
    if current is not None:
        out.append(current.summary())
    return earlier, out


def _valid(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") in ("user", "assistant")
        and isinstance(message.get("content"), str)
    )


def conversation(events: Iterable[SessionEvent]) -> list[dict[str, Any]]:
    """The session's conversation as alternating user/assistant text messages, the
    newest turns within :data:`HISTORY_MAX_CHARS`."""
    earlier, summaries = turns(events)
    messages = list(earlier)
    for turn in summaries:
        messages.extend(_messages(turn))
    return bound(messages)


def bound(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the newest user/assistant pairs within :data:`HISTORY_MAX_CHARS`."""
    pairs = [messages[i : i + 2] for i in range(0, len(messages) - 1, 2)]
    kept: list[list[dict[str, Any]]] = []
    size = 0
    for pair in reversed(pairs):
        size += sum(len(m["content"]) for m in pair)
        if size > HISTORY_MAX_CHARS and kept:
            note = f"({len(pairs) - len(kept)} earlier turns omitted)"
            kept.append(
                [{"role": "user", "content": note}, {"role": "assistant", "content": "OK."}]
            )
            break
        kept.append(pair)
    return [m for pair in reversed(kept) for m in pair]


def compact(events: list[SessionEvent]) -> dict[str, Any]:
    """The ``transcript`` event data that replaces a closed session's log: its
    conversation (what ``resume_session`` needs) and per-turn summaries (prompts,
    final texts, tool calls with clipped inputs and outputs)."""
    _, summaries = turns(events)
    return {"messages": conversation(events), "turns": summaries}
