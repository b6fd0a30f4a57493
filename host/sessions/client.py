"""The ACP client methods the agent may call (permissions, fs/*, terminal/*), each
bounded by the session's limits (limits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from acp import RequestError
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
    ProcessOutput,
    SandboxError,
)

from .models import PermissionReply

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("agentvm.sessions")


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
        cap = self.s.limits.read_text_max_bytes
        raw = bytearray()
        try:
            stream = cast(AsyncGenerator[bytes, None], self.s.sandbox.read_file_stream(path))
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    raw += chunk
                    if len(raw) > cap:
                        raise RequestError.invalid_params(
                            {"details": f"{path} is larger than {cap} bytes"}
                        )
        except FileNotFoundInSandbox as exc:
            raise RequestError.resource_not_found(path) from exc
        except SandboxError as exc:
            raise RequestError.internal_error({"details": str(exc)}) from exc
        content = bytes(raw).decode("utf-8", "replace")
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
        if len(s.terminals) >= s.limits.max_terminals:
            raise RequestError.invalid_request(
                {"details": f"too many terminals (at most {s.limits.max_terminals}); release one"}
            )
        argv: str | list[str] = [command, *args] if args else command
        try:
            handle = await s.sandbox.spawn(
                argv,
                cwd=cwd or s.record.cwd,
                env={e.name: e.value for e in env or ()},
            )
        except SandboxError as exc:
            raise RequestError.internal_error({"details": str(exc)}) from exc
        cap = s.limits.terminal_output_max_bytes
        terminal = _Terminal(handle, min(output_byte_limit or cap, cap))
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
