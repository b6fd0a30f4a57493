"""Reading an agent's stdout lines: what each means, and the events it gives.

The :class:`~host.sessions.session.Session` feeds every complete line of one read of
the agent's stdout here, in order; nothing here awaits: the events are collected
(``batch``) and stored in one commit by the session, which then hands the messages
on (see ``Session._stdout``). Every line is hostile input.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from acp.client.connection import ClientSideConnection

from .limits import SessionLimits
from .models import EventKind, SessionRecord

# Request ids of the host's ACP connection start at generation * ID_SPAN, so answers
# meant for a connection of an earlier host process never match a newer request.
ID_SPAN = 1_000_000
# An event of the agent's output waiting for its read's commit (Session.emit_many):
# (kind, data, stdout offset past its line, rate_limited: None = by kind).
_Pending = tuple[EventKind, dict[str, Any], int | None, bool | None]


class LineReader:
    """The line handling of :class:`~host.sessions.session.Session` (a mixin)."""

    limits: SessionLimits
    record: SessionRecord
    conn: ClientSideConnection | None
    skip_until: int
    open_requests: dict[Any, int]
    prompt_ids: set[Any]
    orphan: asyncio.Event | None
    tokens: int
    last_active: float

    def add_text(self, text: str) -> None: ...

    def _end_orphan(self) -> None: ...

    def _dropped_line(self, batch: list[_Pending], data: dict[str, Any], end: int) -> None:
        """A line the host does not act on: one (rate-limited) ``protocol_error``."""
        if end > self.skip_until:
            batch.append(("protocol_error", data, end, None))

    def _line(
        self, batch: list[_Pending], line: bytes, start: int, end: int
    ) -> dict[str, Any] | None:
        """Parse one line, queue its events; the message if the ACP connection needs it."""
        if not line.strip():
            return None
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            excerpt = line[:200].decode("utf-8", "replace")
            self._dropped_line(batch, {"error": "not_a_json_object", "line": excerpt}, end)
            return None
        replay = end <= self.skip_until
        return message if self._message(batch, message, start, end, replay) else None

    def _message(
        self, batch: list[_Pending], msg: dict[str, Any], start: int, end: int, replay: bool
    ) -> bool:
        """Record what the line means; True: hand it to the ACP connection too."""
        method = msg.get("method")
        has_id = "id" in msg
        params = msg.get("params")
        if method is not None and not has_id:
            # Notifications are ours alone: the ACP connection would start a task per
            # line for nothing (our session_update handler does nothing).
            if method != "session/update" or not isinstance(params, dict):
                return False
            update = params.get("update")
            if not isinstance(update, dict):
                return False
            content = update.get("content")
            if (
                update.get("sessionUpdate") == "agent_message_chunk"
                and isinstance(content, dict)
                and content.get("type") == "text"
            ):
                self.add_text(str(content.get("text", "")))
            if not replay:
                batch.append(("update", update, end, None))
            return False
        if isinstance(method, str) and has_id:
            if len(self.open_requests) >= self.limits.max_open_requests:
                # Never answered: each open request holds a task and its retained bytes.
                if not replay:
                    data = {"error": "too_many_open_requests", "method": method[:100]}
                    batch.append(("protocol_error", data, end, None))
                return False
            # A request from the agent: its bytes stay retained until we answer it.
            self.open_requests[msg["id"]] = start
            if method == "session/request_permission" and isinstance(params, dict):
                meta = params.setdefault("_meta", {})
                if isinstance(meta, dict):
                    meta.update(agentvmRequestId=msg["id"], agentvmReplay=replay, agentvmOffset=end)
        elif method is None and has_id:
            self._answer(batch, msg, end, replay)
        return True

    def _earlier(self, request_id: Any) -> bool:
        """An id of a request sent by an earlier host process (see ID_SPAN)."""
        return (
            isinstance(request_id, int)
            and not isinstance(request_id, bool)
            and request_id < self.record.generation * ID_SPAN
        )

    def _answer(self, batch: list[_Pending], msg: dict[str, Any], end: int, replay: bool) -> None:
        """A response from the agent: one to a prompt ends it with ``prompt_end``,
        a stop reason or (the prompt failed) the error — never silence."""
        rid = msg["id"]
        ours = rid in self.prompt_ids
        self.prompt_ids.discard(rid)
        orphan = self.orphan is not None and not self.orphan.is_set() and self._earlier(rid)
        result = msg.get("result")
        data: dict[str, Any] | None = None
        if isinstance(result, dict) and "stopReason" in result:
            data = {"stop_reason": result["stopReason"]}
            if isinstance(result.get("usage"), dict):
                data["usage"] = result["usage"]
                if ours or orphan:  # the agent's own count; a forged line is not ours
                    self.tokens += _token_count(result["usage"].get("totalTokens"))
        elif (ours or orphan) and "error" in msg:
            data = {"stop_reason": "error", "error": _error_of(msg.get("error"))}
        if data is None:
            return
        self.last_active = time.time()
        if orphan:
            self._end_orphan()
        if replay:
            return
        # The answer to a prompt we sent is stored even in a flood (forged ones, for
        # ids we are not waiting for, pass the rate limiter).
        pending = self.conn is not None and rid in self.conn._conn._pending
        batch.append(("prompt_end", data, end, not (pending or orphan)))


def _error_of(error: Any) -> dict[str, Any]:
    """A JSON-RPC error object as a bounded ``{code, message, data?}``."""
    if not isinstance(error, dict):
        return {"message": str(error)[:2000]}
    out: dict[str, Any] = {"code": error.get("code"), "message": str(error.get("message"))[:2000]}
    data = error.get("data")
    if data is not None:
        text = json.dumps(data)
        out["data"] = data if len(text) <= 4000 else text[:4000]
    return out


def _token_count(value: Any) -> int:
    """A token count from the agent (hostile input): a sane non-negative int or 0."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40:
        return value
    return 0
