"""Lenient parsing of review findings out of an agent's text.

The review prompt asks for a fenced ```json block with ``{"findings": [{file, line,
severity, text}]}``; models answer with a bare list, other key names, a block
without a language, prose around it — take what is there, never fail on it."""

from __future__ import annotations

import json
import re
from typing import Any

SEVERITIES = ("error", "warning", "info")
MAX_FINDINGS = 200
MAX_FINDING_TEXT = 2000
_FENCED = re.compile(r"```[a-zA-Z0-9_-]*\s*\n(.*?)```", re.DOTALL)
_ALIASES = {
    "file": ("file", "path", "filename", "file_path"),
    "line": ("line", "line_number", "lineno", "start_line"),
    "severity": ("severity", "level", "priority", "kind"),
    "text": ("text", "message", "comment", "description", "issue", "finding"),
}


def _candidates(text: str) -> list[str]:
    blocks = [m.group(1) for m in _FENCED.finditer(text)]
    # A bare JSON object or list: from the first opening bracket to the last closing one.
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            blocks.append(text[start : end + 1])
    return blocks


def _pick(item: dict[str, Any], field: str) -> Any:
    for name in _ALIASES[field]:
        if item.get(name) not in (None, ""):
            return item[name]
    return None


def _line(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.match(r"\s*(\d+)", value)
        return int(m.group(1)) if m else None
    return None


def _severity(value: Any) -> str:
    word = str(value or "info").strip().lower()
    if word in ("critical", "high", "major", "bug", "blocker"):
        return "error"
    if word in ("medium", "moderate", "warn"):
        return "warning"
    return word if word in SEVERITIES else "info"


def _normalise(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    text = _pick(item, "text")
    if text is None:
        return None
    file = _pick(item, "file")
    return {
        "file": str(file) if file is not None else None,
        "line": _line(_pick(item, "line")),
        "severity": _severity(_pick(item, "severity")),
        "text": str(text)[:MAX_FINDING_TEXT],
    }


def parse_findings(text: str) -> list[dict[str, Any]] | None:
    """``[{file, line, severity, text}]`` from the first JSON block in ``text`` that
    holds findings; None if there is none (the review is then plain text)."""
    for block in _candidates(text):
        try:
            value = json.loads(block)
        except ValueError:
            continue
        if isinstance(value, dict):
            value = next((value[k] for k in ("findings", "issues", "comments") if k in value), None)
        if not isinstance(value, list):
            continue
        found = [f for f in map(_normalise, value[:MAX_FINDINGS]) if f is not None]
        if found:
            return found
    return None
