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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acp import RequestError
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AllowedOutcome,
    CreateTerminalResponse,
    DeniedOutcome,
    EnvVariable,
    KillTerminalResponse,
    PermissionOption,
    ReadTextFileResponse,
    ReleaseTerminalResponse,
    RequestPermissionResponse,
    TerminalExitStatus,
    TerminalOutputResponse,
    ToolCallUpdate,
    WaitForTerminalExitResponse,
    WriteTextFileResponse,
)

from host.sandbox import (
    FileNotFoundInSandbox,
    ProcessExit,
    ProcessHandle,
    ProcessNotFound,
    ProcessOutput,
    SandboxError,
    SandboxLost,
)

from .errors import AgentExited, PermissionNotFound, SessionClosed
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
# Request ids of the host's ACP connection start at generation * ID_SPAN, so answers
# meant for a connection of an earlier host process never match a newer request.
ID_SPAN = 1_000_000
TERMINAL_OUTPUT_LIMIT = 1024 * 1024


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


@dataclass
class _Permission:
    permission_id: str
    tool_call: dict[str, Any]
    options: list[PermissionOption]
    future: asyncio.Future[PermissionReply | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Terminal:
    handle: ProcessHandle
    limit: int
    output: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    exit_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def add(self, data: bytes) -> None:
        self.output += data
        if len(self.output) > self.limit:
            del self.output[: len(self.output) - self.limit]
            # Never start in the middle of a UTF-8 character.
            while self.output and (self.output[0] & 0xC0) == 0x80:
                del self.output[:1]
            self.truncated = True


class Session:
    def __init__(
        self, manager: SessionManager, record: SessionRecord, *, skip_until: int = 0
    ) -> None:
        self.manager = manager
        self.sandbox = manager.sandbox
        self.record = record
        self.id = record.session_id
        self.status: SessionStatus = "starting"
        self.created_at = time.time()
        self.transport = _Transport(self)
        self.conn: ClientSideConnection | None = None
        self.handle: ProcessHandle | None = None
        self._pump: asyncio.Task[None] | None = None
        # stdout bookkeeping (byte offsets in the agent's stdout)
        self.recv_offset = 0
        self.line_start = 0
        self.line_buf = bytearray()
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
        self.prompt_lock = asyncio.Lock()
        self.permissions: dict[str, _Permission] = {}
        self.always_kinds: set[str] = set()
        self.terminals: dict[str, _Terminal] = {}
        self._terminal_ids = itertools.count(1)
        self._emit_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

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
        for task in (self._pump, self._ack_task):
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
        self, kind: EventKind, data: Mapping[str, Any], offset: int | None = None
    ) -> SessionEvent:
        event = SessionEvent(session_id=self.id, kind=kind, data=dict(data), offset=offset)
        if self.prestarted:
            return event
        async with self._emit_lock:
            await self.manager.store.append(event)
        return event

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
        self.line_buf += data
        self.recv_offset += len(data)
        while (nl := self.line_buf.find(b"\n")) >= 0:
            line = bytes(self.line_buf[:nl])
            del self.line_buf[: nl + 1]
            start = self.line_start
            end = self.line_start = start + nl + 1
            await self._line(line, start, end)

    async def _line(self, line: bytes, start: int, end: int) -> None:
        replay = end <= self.skip_until
        message: Any = None
        if line.strip():
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("session %s: agent wrote a non-JSON line: %.200r", self.id, line)
        if isinstance(message, dict):
            await self._message(message, start, end, replay)
            self.processed = end
            await self.transport.queue.put(message)
        else:
            self.processed = end
        self._schedule_ack()

    async def _message(self, msg: dict[str, Any], start: int, end: int, replay: bool) -> None:
        method = msg.get("method")
        has_id = "id" in msg
        params = msg.get("params")
        if method == "session/update" and not has_id and isinstance(params, dict):
            update = params.get("update")
            if not isinstance(update, dict):
                return
            content = update.get("content")
            if (
                update.get("sessionUpdate") == "agent_message_chunk"
                and isinstance(content, dict)
                and content.get("type") == "text"
            ):
                self.text_parts.append(str(content.get("text", "")))
            if not replay:
                await self.emit("update", update, offset=end)
        elif isinstance(method, str) and has_id:
            # A request from the agent: its bytes stay retained until we answer it.
            self.open_requests[msg["id"]] = start
            if method == "session/request_permission" and isinstance(params, dict):
                meta = params.setdefault("_meta", {})
                if isinstance(meta, dict):
                    meta.update(agentvmRequestId=msg["id"], agentvmReplay=replay, agentvmOffset=end)
        elif method is None and has_id:
            result = msg.get("result")
            if isinstance(result, dict) and "stopReason" in result and not replay:
                data = {"stop_reason": result["stopReason"]}
                if isinstance(result.get("usage"), dict):
                    data["usage"] = result["usage"]
                await self.emit("prompt_end", data, offset=end)

    async def _on_exit(self, exit_code: int | None, reason: str | None) -> None:
        if self.exited.is_set():
            return
        self.exit_code = exit_code
        self.exit_reason = reason
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
        async with self._write_lock:
            for attempt in range(2):
                try:
                    await self.sandbox.write_stdin(self.record.pid, data)
                    break
                except SandboxLost:
                    if attempt:
                        raise
                    await self.sandbox.wait_ready()
                except (ProcessNotFound, SandboxError) as exc:
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


def _choose(options: list[PermissionOption], reply: PermissionReply | None) -> str | None:
    """The option id for a reply (None: answer ``cancelled``)."""
    if reply is None:
        return None
    prefs = {
        "once": ("allow_once", "allow_always"),
        "always": ("allow_always", "allow_once"),
        "reject": ("reject_once", "reject_always"),
    }[reply]
    for kind in prefs:
        for option in options:
            if option.kind == kind:
                return option.option_id
    return None


class _Client:
    """The ACP client methods the agent may call."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def on_connect(self, conn: Any) -> None:
        pass

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        pass  # stored by the session as the line arrived (in order)

    async def request_permission(
        self,
        session_id: str,
        tool_call: ToolCallUpdate,
        options: list[PermissionOption],
        **kwargs: Any,
    ) -> RequestPermissionResponse:
        s = self.s
        permission_id = f"perm-{kwargs.get('agentvmRequestId', id(tool_call))}"
        replay = bool(kwargs.get("agentvmReplay"))
        offset = kwargs.get("agentvmOffset")
        call = tool_call.model_dump(mode="json", by_alias=True, exclude_none=True)
        kind = str(call.get("kind") or "")
        reply: PermissionReply | None
        auto = s.record.permission_policy == "allow" or (kind and kind in s.always_kinds)
        if auto:
            reply = "once"
        else:
            perm = _Permission(permission_id, call, options)
            s.permissions[permission_id] = perm
            if not replay:
                await s.emit(
                    "permission_request",
                    {
                        "permission_id": permission_id,
                        "tool_call": call,
                        "options": [
                            o.model_dump(mode="json", by_alias=True, exclude_none=True)
                            for o in options
                        ],
                    },
                    offset=offset if isinstance(offset, int) else None,
                )
            try:
                reply = await perm.future
            finally:
                s.permissions.pop(permission_id, None)
            if reply == "always" and kind:
                s.always_kinds.add(kind)
        option_id = _choose(options, reply)
        if not s.exited.is_set():
            await s.emit(
                "permission_response",
                {
                    "permission_id": permission_id,
                    "reply": reply,
                    "option_id": option_id,
                    "auto": bool(auto),
                },
            )
        if option_id is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(option_id=option_id, outcome="selected")
        )

    # -- fs ------------------------------------------------------------------------

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> ReadTextFileResponse:
        try:
            raw = await self.s.sandbox.read_file(path)
        except FileNotFoundInSandbox as exc:
            raise RequestError.resource_not_found(path) from exc
        except SandboxError as exc:
            raise RequestError.internal_error({"details": str(exc)}) from exc
        content = raw.decode("utf-8", "replace")
        if line is not None or limit is not None:
            lines = content.splitlines(keepends=True)
            first = max((line or 1) - 1, 0)
            content = "".join(lines[first : first + limit if limit is not None else None])
        return ReadTextFileResponse(content=content)

    async def write_text_file(
        self, session_id: str, path: str, content: str, **kwargs: Any
    ) -> WriteTextFileResponse:
        try:
            await self.s.sandbox.write_file(path, content.encode(), parents=True)
        except SandboxError as exc:
            raise RequestError.internal_error({"details": str(exc)}) from exc
        return WriteTextFileResponse()

    # -- terminals -------------------------------------------------------------------

    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        env: list[EnvVariable] | None = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **kwargs: Any,
    ) -> CreateTerminalResponse:
        s = self.s
        argv: str | list[str] = [command, *args] if args else command
        try:
            handle = await s.sandbox.spawn(
                argv,
                cwd=cwd or s.record.cwd,
                env={e.name: e.value for e in env or ()},
            )
        except SandboxError as exc:
            raise RequestError.internal_error({"details": str(exc)}) from exc
        terminal = _Terminal(handle, output_byte_limit or TERMINAL_OUTPUT_LIMIT)
        terminal_id = f"term-{next(s._terminal_ids)}"
        s.terminals[terminal_id] = terminal
        terminal.task = asyncio.create_task(_collect(terminal))
        return CreateTerminalResponse(terminal_id=terminal_id)

    def _terminal(self, terminal_id: str) -> _Terminal:
        terminal = self.s.terminals.get(terminal_id)
        if terminal is None:
            raise RequestError.invalid_params({"details": f"unknown terminal {terminal_id}"})
        return terminal

    async def terminal_output(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> TerminalOutputResponse:
        t = self._terminal(terminal_id)
        status = TerminalExitStatus(exit_code=t.exit_code) if t.done.is_set() else None
        return TerminalOutputResponse(
            output=bytes(t.output).decode("utf-8", "replace"),
            truncated=t.truncated,
            exit_status=status,
        )

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> WaitForTerminalExitResponse:
        t = self._terminal(terminal_id)
        await t.done.wait()
        return WaitForTerminalExitResponse(exit_code=t.exit_code)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> KillTerminalResponse:
        t = self._terminal(terminal_id)
        if not t.done.is_set():
            with contextlib.suppress(SandboxError):
                await self.s.sandbox.kill_process(t.handle.pid)
        return KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> ReleaseTerminalResponse:
        t = self.s.terminals.pop(terminal_id, None)
        if t is not None and not t.done.is_set():
            with contextlib.suppress(SandboxError):
                await self.s.sandbox.kill_process(t.handle.pid)
        return ReleaseTerminalResponse()

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RequestError.method_not_found(method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        pass

    async def create_elicitation(self, message: str, mode: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found("elicitation/create")

    async def complete_elicitation(self, elicitation_id: str, **kwargs: Any) -> None:
        pass


async def _collect(terminal: _Terminal) -> None:
    try:
        async for ev in terminal.handle.events():
            if isinstance(ev, ProcessOutput):
                terminal.add(ev.data)
            elif isinstance(ev, ProcessExit):
                terminal.exit_code = ev.exit_code
    except SandboxError as exc:
        log.warning("terminal output ended: %s", exc)
    finally:
        terminal.done.set()
