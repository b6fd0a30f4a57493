"""One ACP session: the agent process in the sandbox, its stdio as an ACP transport,
and the client side of the protocol (permissions, fs/*, terminal/*).

Agent stdout is read line by line in order. Each ``session/update`` is stored
(numbered) *before* the ACP connection sees it, and the supervisor is told it may
forget those bytes only after that (``ack_output``), so a host that dies at any
instant re-attaches and replays exactly what it had not yet stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from acp.client.connection import ClientSideConnection

from host.sandbox import (
    ProcessExit,
    ProcessHandle,
    ProcessNotFound,
    ProcessOutput,
    SandboxError,
    SandboxLost,
)

from .client import _Client, _Permission, _Terminal
from .errors import AgentExited, PermissionNotFound, SessionClosed
from .limits import FINAL_KINDS, EventGate
from .lines import ID_SPAN, LineReader, _Pending
from .models import (
    EventKind,
    PermissionReply,
    SessionEvent,
    SessionRecord,
    SessionStatus,
    SessionSummary,
)

if TYPE_CHECKING:
    from .manager import SessionManager

log = logging.getLogger("agentvm.sessions")

STDERR_TAIL = 16 * 1024
# Acknowledging the agent's stdout to the supervisor (see _ack_loop): how long acks
# are coalesced (seconds), and the unacknowledged bytes that are acked at once. Each
# ack wakes the supervisor and the host (a call and its result): at 20 ms one landed
# in most turns of back-to-back prompts, and 50 a second in a long streamed answer.
ACK_DELAY = 0.25
ACK_EAGER_BYTES = 256 * 1024
# Events stored because of agent output pass the rate limiter (limits.py); the
# host's own (prompt, agent_exit, session_closed) only the store limit, and so do
# permission requests: dropping one would leave the agent waiting for an answer
# nobody was asked for, and at most max_open_requests are unanswered at once.
AGENT_KINDS = frozenset({"update", "prompt_end", "permission_response", "protocol_error"})


def _size(event: SessionEvent) -> int:
    """About the bytes the event takes in the store (its JSON)."""
    return len(event.model_dump_json())


def _tail_text(data: bytes | bytearray, lines: int = 40) -> str:
    text = bytes(data).decode("utf-8", "replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class _Transport:
    """acp message transport over the agent's stdio (through the supervisor)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def send(self, message: dict[str, Any]) -> None:
        await self.session.write_message(message)

    async def receive(self) -> dict[str, Any] | None:
        return await self.queue.get()

    async def close(self) -> None:
        self.queue.put_nowait(None)


class Session(LineReader):
    def __init__(
        self,
        manager: SessionManager,
        record: SessionRecord,
        *,
        skip_until: int = 0,
        stored_bytes: int = 0,
    ) -> None:
        self.manager = manager
        self.limits = manager.limits
        # What of the agent's output gets stored (rate and size bounds).
        self.gate = EventGate(self.limits, stored_bytes)
        self._flush_task: asyncio.Task[None] | None = None
        self.sandbox = manager.sandbox
        self.record = record
        self.id = record.session_id
        self.status: SessionStatus = "starting"
        self.created_at = time.time()
        # When it was created, last prompted or answered (prune_sessions, stats).
        self.last_active = self.created_at
        self.tokens = 0  # model tokens its prompts used (the agent's usage answers)
        self.transport = _Transport(self)
        self.conn: ClientSideConnection | None = None
        self.handle: ProcessHandle | None = None
        self._pump: asyncio.Task[None] | None = None
        # stdout bookkeeping (byte offsets in the agent's stdout)
        self.recv_offset = 0
        self.line_start = 0
        self.line_buf = bytearray()
        # Bytes of the current line past the line limit (0: not over it).
        self.oversized = 0
        self.processed = 0
        self.open_requests: dict[Any, int] = {}
        self.acked = 0
        self._ack_task: asyncio.Task[None] | None = None
        # Lines ending at or before this offset were stored by an earlier host process.
        self.skip_until = skip_until
        self.stderr_tail = bytearray()
        self.exit_code: int | None = None
        self.exit_reason: str | None = None
        self.exited = asyncio.Event()
        self.closing = False
        # Pre-started, not yet handed to a caller: nothing is stored or broadcast.
        self.prestarted = False
        self.text_parts: list[str] = []
        self.text_bytes = 0
        self.prompt_lock = asyncio.Lock()
        # Ids of our session/prompt requests the agent has not answered yet.
        self.prompt_ids: set[Any] = set()
        # Set at re-attach when a prompt sent by an earlier host process was still
        # running (its `prompt` event has no `prompt_end`): set once it ends.
        self.orphan: asyncio.Event | None = None
        self.permissions: dict[str, _Permission] = {}
        self.always_kinds: set[str] = set()
        self.terminals: dict[str, _Terminal] = {}
        self._terminal_ids = itertools.count(1)
        self._emit_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        # The next session/prompt's ``prompt`` event being stored (send_prompt).
        self.prompt_stored: asyncio.Future[Any] | None = None
        # The commit of the last read whose answers went on before it ended.
        self._storing: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self, handle: ProcessHandle) -> ClientSideConnection:
        self.handle = handle
        self.recv_offset = self.line_start = self.processed = self.acked = handle.offset
        self._pump = asyncio.create_task(self._run(handle), name=f"session-{self.id}")
        conn = ClientSideConnection(_Client(self), self.transport)
        # See ID_SPAN: keep this generation's ids apart from earlier ones.
        conn._conn._next_request_id = self.record.generation * ID_SPAN
        self.conn = conn
        return conn

    async def detach(self) -> None:
        """Stop listening (host shutting down); the agent keeps running."""
        for task in (self._pump, self._ack_task, self._flush_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for terminal in self.terminals.values():
            if terminal.task is not None:
                terminal.task.cancel()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()

    def summary(self) -> SessionSummary:
        return SessionSummary(
            session_id=self.id,
            agent_type=self.record.agent_type,
            status=self.status,
            pid=self.record.pid,
            cwd=self.record.cwd,
            permission_policy=self.record.permission_policy,
            pending_permissions=sorted(self.permissions),
            exit_code=self.exit_code,
            created_at=self.created_at,
            last_active=self.last_active,
            tokens=self.tokens,
            resumed_from=self.record.resumed_from,
            forked_from=self.record.forked_from,
        )

    def check_usable(self) -> None:
        if self.status == "closed":
            raise SessionClosed(f"session {self.id} is closed", session_id=self.id)
        if self.status == "exited":
            raise self.exit_error()

    def exit_error(self) -> AgentExited:
        how = (
            f"exit code {self.exit_code}" if self.exit_code is not None else self.exit_reason or ""
        )
        tail = _tail_text(self.stderr_tail, 10)
        message = f"agent of session {self.id} ({self.record.agent_type}) exited ({how})"
        if tail:
            message += f"; stderr tail:\n{tail}"
        return AgentExited(
            message,
            session_id=self.id,
            exit_code=self.exit_code,
            reason=self.exit_reason,
            stderr_tail=_tail_text(self.stderr_tail),
        )

    # -- events ------------------------------------------------------------------

    async def emit(
        self,
        kind: EventKind,
        data: Mapping[str, Any],
        offset: int | None = None,
        *,
        rate_limited: bool | None = None,
    ) -> SessionEvent:
        """Store (and broadcast) an event unless a limit drops it (limits.py): drops
        are counted and stored as an ``events_dropped`` marker later."""
        event = SessionEvent(session_id=self.id, kind=kind, data=dict(data), offset=offset)
        if self.prestarted:
            return event
        async with self._emit_lock:
            await self._store(self._admit(event, rate_limited))
        return event

    async def emit_many(self, items: list[_Pending]) -> None:
        """:meth:`emit` for the events of one read of the agent's stdout: admitted in
        order, stored in one commit (one per read, not one per line: each commit is a
        wake-up of the store's thread on the turn's path)."""
        if self.prestarted or not items:
            return
        async with self._emit_lock:
            out: list[tuple[SessionEvent, int]] = []
            for kind, data, offset, limited in items:
                event = SessionEvent(session_id=self.id, kind=kind, data=data, offset=offset)
                out += self._admit(event, limited)
            await self._store(out)

    def _admit(
        self, event: SessionEvent, rate_limited: bool | None
    ) -> list[tuple[SessionEvent, int]]:
        """What storing ``event`` means now (under ``_emit_lock``): ``[]`` (dropped),
        or the event, after the marker of earlier drops if one is due."""
        size = _size(event)
        gate = self.gate
        kind = event.kind
        limited = kind in AGENT_KINDS if rate_limited is None else rate_limited
        verdict = gate.admit(kind, size, rate_limited=limited)
        if verdict != "ok":
            gate.drop(size, verdict)
            if verdict == "full" and not gate.full_announced:
                return self._marker()  # once: "nothing more is stored"
            if verdict == "rate":
                self._schedule_flush()
            return []
        out = self._marker() if kind in FINAL_KINDS or not gate.full_announced else []
        gate.stored(size)  # counted at once: later admissions see it
        out.append((event, size))
        return out

    def _marker(self) -> list[tuple[SessionEvent, int]]:
        data = self.gate.take_marker()
        if data is None:
            return []
        marker = SessionEvent(session_id=self.id, kind="events_dropped", data=data)
        size = _size(marker)
        self.gate.stored(size)
        return [(marker, size)]

    async def _store(self, events: list[tuple[SessionEvent, int]]) -> None:
        if len(events) == 1:
            await self.manager.store.append(events[0][0])
        elif events:
            await self.manager.store.append_many([e for e, _ in events])

    async def _store_marker(self) -> None:
        await self._store(self._marker())

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        """Drops with no stored event after them still get their marker, soon."""
        await asyncio.sleep(self.limits.drop_flush_seconds)
        async with self._emit_lock:
            if not self.gate.full_announced:
                try:
                    await self._store_marker()
                except Exception:
                    log.exception("session %s: storing a drop marker failed", self.id)

    def add_text(self, text: str) -> None:
        """Collect the prompt's answer text, bounded (the events keep all of it)."""
        room = self.limits.prompt_text_max_bytes - self.text_bytes
        if room > 0:
            piece = text[:room]
            self.text_parts.append(piece)
            self.text_bytes += len(piece)

    def reset_text(self) -> None:
        self.text_parts = []
        self.text_bytes = 0

    # -- reading the agent -------------------------------------------------------

    async def _run(self, handle: ProcessHandle) -> None:
        current: ProcessHandle | None = handle
        try:
            while current is not None:
                try:
                    async for ev in current.events():
                        if isinstance(ev, ProcessOutput):
                            if ev.stream == "stdout":
                                await self._stdout(ev.data)
                            else:
                                self._stderr(ev.data)
                        elif isinstance(ev, ProcessExit):
                            await self._on_exit(ev.exit_code, None)
                            return
                    current = None
                except SandboxLost as exc:
                    if self.closing:
                        await self._on_exit(None, "closed")
                        return
                    current = await self._reconnect(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("session %s: reading the agent failed", self.id)
            await self._on_exit(None, f"host error while reading the agent: {exc}")

    async def _reconnect(self, lost: SandboxLost) -> ProcessHandle | None:
        """The supervisor link dropped: wait for it and resume at our offset."""
        log.info("session %s: %s; re-attaching", self.id, lost)
        try:
            await self.sandbox.wait_ready()
            handle = await self.sandbox.attach(
                self.record.pid, offset=self.recv_offset, replace=True
            )
        except ProcessNotFound:
            await self._on_exit(None, "the agent process is gone (the sandbox restarted)")
            return None
        except SandboxError as exc:
            await self._on_exit(None, f"lost the sandbox: {exc}")
            return None
        self.handle = handle
        return handle

    def _stderr(self, data: bytes) -> None:
        self.stderr_tail += data
        if len(self.stderr_tail) > STDERR_TAIL:
            del self.stderr_tail[: len(self.stderr_tail) - STDERR_TAIL]

    async def _stdout(self, data: bytes) -> None:
        """One read of the agent's stdout: its complete lines are parsed in order,
        their events stored in one commit, and only then handed to the ACP connection
        and acknowledged (stored before anyone sees them, as line by line)."""
        base = self.recv_offset
        self.recv_offset += len(data)
        limit = self.limits.line_max_bytes
        batch: list[_Pending] = []
        forward: list[dict[str, Any]] = []
        done: int | None = None  # the end offset of the last complete line
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            piece = data[pos : len(data) if nl < 0 else nl]
            if self.oversized:
                self.oversized += len(piece)
            else:
                self.line_buf += piece
                if len(self.line_buf) > limit:
                    # Past the line limit: drop what we have and the rest of the line.
                    self.oversized = len(self.line_buf)
                    self.line_buf.clear()
            if nl < 0:
                break
            pos = nl + 1
            start = self.line_start
            end = done = self.line_start = base + nl + 1
            if self.oversized:
                size, self.oversized = self.oversized, 0
                self._dropped_line(
                    batch, {"error": "line_too_long", "bytes": size, "limit": limit}, end
                )
            else:
                line = bytes(self.line_buf)
                self.line_buf.clear()
                message = self._line(batch, line, start, end)
                if message is not None:
                    forward.append(message)
        if done is None:
            return
        if forward and batch and all("method" not in m for m in forward):
            # Only answers to our own requests (a prompt's end): the ACP client takes
            # them while the commit runs, and send_prompt returns only once it is
            # done (flushed). Requests from the agent wait for it here.
            self._storing = storing = asyncio.ensure_future(self.emit_many(batch))
            for message in forward:
                self.transport.queue.put_nowait(message)
            forward = []
            await storing
        else:
            await self.emit_many(batch)
        self.processed = max(self.processed, done)
        for message in forward:
            self.transport.queue.put_nowait(message)
        self._schedule_ack()

    async def flushed(self) -> None:
        """Wait until the events of the agent output handed on so far are stored (a
        failed commit raises here too)."""
        if self._storing is not None:
            await asyncio.shield(self._storing)

    def _end_orphan(self) -> None:
        if self.orphan is not None and not self.orphan.is_set():
            self.orphan.set()
            if self.status == "prompting" and not self.prompt_lock.locked():
                self.status = "ready"

    async def _on_exit(self, exit_code: int | None, reason: str | None) -> None:
        if self.exited.is_set():
            return
        self.exit_code = exit_code
        self.exit_reason = reason
        open_prompt = bool(self.prompt_ids) or (
            self.orphan is not None and not self.orphan.is_set()
        )
        if open_prompt and not self.closing:
            # The prompt in flight ends with the reason (the agent_exit event follows).
            with contextlib.suppress(Exception):
                await self.emit(
                    "prompt_end",
                    {
                        "stop_reason": "error",
                        "error": {"message": "the agent exited during the prompt"},
                    },
                    rate_limited=False,
                )
        self.prompt_ids.clear()
        if self.orphan is not None:
            self.orphan.set()
        if self.closing:
            self.status = "closed"
        else:
            self.status = "exited"
            data: dict[str, Any] = {
                "exit_code": exit_code,
                "stderr_tail": _tail_text(self.stderr_tail),
            }
            if reason:
                data["reason"] = reason
            with contextlib.suppress(Exception):
                await self.emit("agent_exit", data)
        self.exited.set()
        self.transport.queue.put_nowait(None)  # the ACP connection fails pending calls
        for perm in self.permissions.values():
            if not perm.future.done():
                perm.future.set_result(None)
        for terminal in self.terminals.values():
            if terminal.exit_code is None:
                with contextlib.suppress(Exception):
                    await self.sandbox.kill_process(terminal.handle.pid)

    # -- acknowledgements --------------------------------------------------------

    def _ack_target(self) -> int:
        return min(self.open_requests.values(), default=self.processed)

    def _schedule_ack(self) -> None:
        if self._ack_target() > self.acked and (self._ack_task is None or self._ack_task.done()):
            self._ack_task = asyncio.create_task(self._ack_loop())

    async def _ack_loop(self) -> None:
        # Coalesced: one ack for the lines of ACK_DELAY (a turn's few lines), not one
        # per line (each is a message that wakes the supervisor, on the turn's path);
        # at once past ACK_EAGER_BYTES, long before the supervisor's retained buffer
        # (8 MiB) fills. A later ack only means more replayed (and skipped) output
        # after a host restart: stored events carry their offsets.
        if self._ack_target() - self.acked < ACK_EAGER_BYTES:
            await asyncio.sleep(ACK_DELAY)
        while (target := self._ack_target()) > self.acked:
            try:
                await self.sandbox.ack_output(self.record.pid, target)
            except SandboxError:
                return  # re-attach replays from the last ack: nothing is lost
            self.acked = target

    # -- writing to the agent ----------------------------------------------------

    async def write_message(self, message: dict[str, Any]) -> None:
        if self.exited.is_set():
            raise ConnectionError(f"agent of session {self.id} has exited")
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        prompt_id = message.get("id") if message.get("method") == "session/prompt" else None
        if message.get("method") == "session/prompt" and self.prompt_stored is not None:
            stored, self.prompt_stored = self.prompt_stored, None
            await stored  # the prompt reaches the agent only once its event is stored
        if prompt_id is not None:
            self.prompt_ids.add(prompt_id)
        async with self._write_lock:
            for attempt in range(2):
                try:
                    await self.sandbox.write_stdin(self.record.pid, data)
                    break
                except SandboxLost:
                    if attempt:
                        self.prompt_ids.discard(prompt_id)
                        raise
                    await self.sandbox.wait_ready()
                except (ProcessNotFound, SandboxError) as exc:
                    self.prompt_ids.discard(prompt_id)
                    raise ConnectionError(f"cannot write to the agent: {exc}") from exc
        if "id" in message and "method" not in message:
            # Our answer to an agent request went out: its bytes may be forgotten.
            self.open_requests.pop(message["id"], None)
            self._schedule_ack()

    # -- permissions ---------------------------------------------------------------

    def respond(self, permission_id: str, reply: PermissionReply) -> None:
        perm = self.permissions.get(permission_id)
        if perm is None or perm.future.done():
            raise PermissionNotFound(
                f"no pending permission request {permission_id!r} on session {self.id}",
                session_id=self.id,
                permission_id=permission_id,
            )
        perm.future.set_result(reply)

    def cancel_permissions(self) -> None:
        for perm in self.permissions.values():
            if not perm.future.done():
                perm.future.set_result(None)
