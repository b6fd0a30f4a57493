"""Reading token usage out of Messages API responses (JSON bodies and SSE streams)."""

from __future__ import annotations

import json
from typing import Any

from .models import Usage

# A JSON body is parsed for usage only up to this size (bigger is passed through).
MAX_JSON = 16 * 1024 * 1024


def usage_from_json(body: bytes) -> Usage | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("usage"), dict):
        return Usage.from_api(data["usage"])
    return None


class SSEUsage:
    """Incremental parser for a ``text/event-stream`` body: ``message_start`` carries
    the input (and cache) counts, each ``message_delta`` the cumulative output count
    (and, on newer API versions, cumulative input counts too)."""

    def __init__(self) -> None:
        self._buf = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while True:
            cut = _event_end(self._buf)
            if cut is None:
                return
            end, sep = cut
            event, self._buf = self._buf[:end], self._buf[end + sep :]
            self._event(event)

    def _event(self, raw: bytes) -> None:
        # Only these two carry usage: the text deltas (most of a stream) are not
        # JSON-decoded (the type is checked again once decoded).
        if b"message_start" not in raw and b"message_delta" not in raw:
            return
        data_lines = [
            line[5:].lstrip(b" ")
            for line in raw.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:")
        ]
        if not data_lines:
            return
        try:
            data: Any = json.loads(b"\n".join(data_lines))
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self.usage = Usage.from_api(message.get("usage"))
        elif kind == "message_delta" and isinstance(data.get("usage"), dict):
            delta = data["usage"]
            current = self.usage or Usage()
            update = Usage.from_api(delta)
            # Cumulative counts: the latest value wins for whatever the delta names.
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ):
                if isinstance(delta.get(name), int | float):
                    setattr(current, name, getattr(update, name))
            self.usage = current


def _event_end(buf: bytes) -> tuple[int, int] | None:
    """Position and length of the first blank-line separator, if any."""
    best: tuple[int, int] | None = None
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buf.find(sep)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, len(sep))
    return best
