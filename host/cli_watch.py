"""``agentvm watch``: a run live — its steps, then its agent's session events.

It follows the orchestrator's ``run_*`` broadcasts and, once the run names its vm
(``meta.vm``), that vm's ``session_event`` broadcasts (docs/sessions.md, "Events"),
over two SSE connections read by one task each into one queue. Everything printed
may come from sandbox code: plain text, control characters escaped (``clean``).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
from typing import Annotated, Any

import httpx
import typer
from rich.syntax import Syntax
from rich.text import Text

from orchestrator.keys import encode_key_path

from .cli_common import (
    DEFAULT,
    KeyArg,
    TokenOpt,
    UrlOpt,
    check,
    console,
    fail,
    out,
    raw_client,
    run_client,
)
from .cli_runs import (
    EXCERPT,
    FINISHED,
    actor_path,
    clean,
    duration,
    error_text,
    parse_run_id,
    show_json,
    styled,
)

RUN_EVENTS = ("run_started", "run_step", "run_meta", "run_completed", "run_failed", "run_cancelled")
# How long ``watch`` waits for an event stream to be established before giving up.
CONNECT_TIMEOUT_S = 30.0


class _Stream:
    """One SSE subscription, read by a task into the shared queue as (source, event,
    payload); ``_connected`` once subscribed, ``_ended`` / ``_error`` at the end.

    ``wait_for_actor``: a 404 (the vm is named before it is created) is retried every
    ``RETRY_S`` seconds instead of ending the stream; never creates the actor."""

    RETRY_S = 0.5

    def __init__(
        self, source: str, sink: asyncio.Queue[tuple[str, str, Any]], wait_for_actor: bool = False
    ) -> None:
        self.source = source
        self.sink = sink
        self.wait_for_actor = wait_for_actor
        self.connected = asyncio.Event()
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, http: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
        self.task = asyncio.create_task(self._run(http, path, params))

    async def _run(self, http: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
        try:
            # Polls the server (the actor appears there), not local state: no Event to await.
            while not await self._read(http, path, params):  # noqa: ASYNC110
                await asyncio.sleep(self.RETRY_S)
            await self.sink.put((self.source, "_ended", None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported by the consumer, who decides what it means
            self.error = exc
            await self.sink.put((self.source, "_error", exc))
        finally:
            self.connected.set()

    async def _read(self, http: httpx.AsyncClient, path: str, params: dict[str, str]) -> bool:
        """Read the stream to its end (True); False: the actor does not exist yet."""
        async with http.stream("GET", path, params=params) as resp:
            if resp.status_code == 404 and self.wait_for_actor:
                return False
            if resp.status_code >= 400:
                await resp.aread()
                check(resp)
            name, data = "message", list[str]()
            async for line in resp.aiter_lines():
                if line.startswith(":"):  # ": connected <actor id>" once subscribed; pings
                    if not self.connected.is_set():
                        self.connected.set()
                        await self.sink.put((self.source, "_connected", None))
                elif line == "":
                    if data:
                        await self.sink.put((self.source, name, json.loads("\n".join(data))))
                    name, data = "message", []
                else:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
        return True

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


class SessionPrinter:
    """Renders a vm's ``session_event`` broadcasts (docs/sessions.md, "Events")."""

    def __init__(self) -> None:
        self.in_message = False
        self.seen: dict[str, int] = {}  # session id -> last seq printed
        self.titles: dict[str, str] = {}  # tool call id -> title

    def _end_message(self) -> None:
        if self.in_message:
            out.print()
            self.in_message = False

    def event(self, ev: dict[str, Any]) -> None:
        sid, seq = str(ev.get("session_id", "")), ev.get("seq")
        if isinstance(seq, int):
            if seq <= self.seen.get(sid, 0):
                return  # already printed (the backfill and the live stream overlap)
            self.seen[sid] = seq
        kind, data = ev.get("kind"), ev.get("data")
        data = data if isinstance(data, dict) else {}
        if kind == "update":
            self.update(data)
            return
        self._end_message()
        if kind == "prompt":
            out.print(Text("▶ prompt: ", style="bold cyan") + Text(clean(data.get("text"), 500)))
        elif kind == "prompt_end":
            line = Text("■ prompt end: ", style="bold cyan") + Text(
                clean(data.get("stop_reason", "?"))
            )
            if data.get("usage"):
                line.append(f" usage {clean(data['usage'], 300)}", style="dim")
            if data.get("error"):
                line.append(f" {error_text(data['error'])}", style="red")
            out.print(line)
        elif kind == "agent_exit":
            out.print(
                Text(f"agent exited ({clean(data.get('exit_code'))}): ", style="red")
                + Text(clean(data.get("stderr_tail", ""), 1000))
            )
        elif kind == "permission_request":
            tool = data.get("tool_call") if isinstance(data.get("tool_call"), dict) else {}
            out.print(
                Text("? permission asked: ", style="yellow")
                + Text(clean((tool or {}).get("title", ""), 300))
            )
        elif kind in ("events_dropped", "protocol_error", "session_closed"):
            out.print(Text(f"{clean(kind)} {clean(data, 300)}", style="dim"))

    def update(self, u: dict[str, Any]) -> None:
        kind = u.get("sessionUpdate")
        if kind in ("agent_message_chunk", "agent_thought_chunk"):
            content = u.get("content")
            text = content.get("text") if isinstance(content, dict) else None
            if isinstance(text, str):
                self.in_message = True
                style = "dim italic" if kind == "agent_thought_chunk" else ""
                out.print(Text(clean(text), style=style), end="")
            return
        self._end_message()
        call_id = str(u.get("toolCallId", ""))
        if kind == "tool_call":
            title = clean(u.get("title") or call_id, 300)
            self.titles[call_id] = title
            line = Text("🔧 ", style="bold") + Text(title, style="bold")
            line.append(f" ({clean(u.get('kind', 'other'))})", style="dim")
            if u.get("rawInput") is not None:
                line.append(" " + clean(u["rawInput"], 300), style="dim")
            out.print(line)
        elif kind == "tool_call_update":
            status = u.get("status")
            title = self.titles.get(call_id, clean(call_id))
            if status in ("completed", "failed"):
                mark = "✓" if status == "completed" else "✗"
                out.print(Text(f"  {mark} {title} ", style="dim") + styled(status))
            for item in u.get("content") or []:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "diff":
                    self.diff(item)
                elif status == "failed" and item.get("type") == "content":
                    inner = item.get("content")
                    if isinstance(inner, dict) and isinstance(inner.get("text"), str):
                        out.print(Text("    " + clean(inner["text"], EXCERPT), style="red"))

    def diff(self, item: dict[str, Any]) -> None:
        path = clean(item.get("path", "?"))
        old, new = item.get("oldText") or "", item.get("newText") or ""
        if not isinstance(old, str) or not isinstance(new, str):
            return
        lines = difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{path.lstrip('/')}",
            tofile=f"b/{path.lstrip('/')}",
        )
        text = clean("".join(lines), 20 * EXCERPT)
        if text:
            out.print(Syntax(text, "diff", theme="ansi_dark", background_color="default"))

    def finish(self) -> None:
        self._end_message()


# Pages of stored session events ``watch`` reads per session when catching up.
BACKFILL_PAGES = 10


async def _backfill(
    http: httpx.AsyncClient, vm_path: str, printer: SessionPrinter, *, quiet: bool = False
) -> None:
    """Print the vm's stored session events not printed yet (events are stored before
    they are broadcast): the ones before ``watch`` subscribed, and at the run's end the
    ones still in flight on the vm's stream. Best effort: the vm may be gone."""

    async def action(name: str, *args: Any) -> Any:
        resp = await http.post(
            f"{vm_path}/actions/{name}", params={"create": "false"}, json={"args": list(args)}
        )
        return check(resp).json().get("output")

    try:
        listed = await action("list_sessions")
        sids = [x.get("session_id") for x in listed or [] if isinstance(x, dict)]
        for sid in dict.fromkeys([*sids, *printer.seen]):  # closed sessions are not listed
            if not isinstance(sid, str):
                continue
            for _ in range(BACKFILL_PAGES):
                since = printer.seen.get(sid, 0)
                page = await action("get_session_events", sid, {"since": since, "limit": 1000})
                for ev in page or []:
                    if isinstance(ev, dict):
                        printer.event(ev)
                if not page or printer.seen.get(sid, 0) == since:
                    break
    except Exception as exc:  # no such vm or action, a transport error, a bad answer
        if not quiet:
            console.print(Text(f"(stored session events unavailable: {clean(str(exc), 200)})"))


def _step_line(p: dict[str, Any]) -> Text:
    status = p.get("status")
    mark = {"running": "…", "completed": "✓", "failed": "✗", "retrying": "↻"}.get(str(status), "·")
    line = Text(f"{mark} step ", style="bold") + Text(clean(p.get("step", "?")), style="bold")
    line.append(" ")
    line.append_text(styled(status))
    attempt = p.get("attempt", p.get("attempts"))
    if isinstance(attempt, int) and attempt > 1:
        line.append(f" (attempt {attempt})", style="dim")
    if p.get("error"):
        line.append(" " + error_text(p["error"]), style="red")
    return line


async def watch_run(http: httpx.AsyncClient, actor: str, key: str, rid: int) -> dict[str, Any]:
    """Print the run's steps and its vm's session events until it ends; its final detail."""
    base = actor_path(actor, key)
    events: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
    orch = _Stream("run", events)
    orch.start(http, f"{base}/events", {"events": ",".join(RUN_EVENTS), "create": "false"})
    vm_stream: _Stream | None = None
    vm_path = ""
    printer = SessionPrinter()

    def follow_vm(vm_key: str) -> _Stream:
        nonlocal vm_path
        vm_path = f"/actors/vm/{encode_key_path((vm_key,))}"
        out.print(Text("vm ", style="dim") + Text(clean(vm_key), style="bold"))
        stream = _Stream("vm", events, wait_for_actor=True)
        stream.start(http, f"{vm_path}/events", {"events": "session_event", "create": "false"})
        return stream

    try:
        # Subscribe first, then read the run: no event falls between the two.
        await asyncio.wait_for(orch.connected.wait(), CONNECT_TIMEOUT_S)
        if orch.error is not None:
            raise orch.error
        detail = check(await http.get(f"{base}/runs/{rid}")).json()
        header = Text(f"run {rid} ", style="bold") + Text(clean(detail.get("queue", "")))
        out.print(header + Text(" ") + styled(detail.get("status")))
        for entry in detail.get("history") or []:
            if isinstance(entry, dict) and entry.get("kind") == "step":
                out.print(_step_line({**entry, "step": entry.get("path")}))
        if detail.get("status") in FINISHED:
            return dict(detail)
        meta = detail.get("meta")
        vm = meta.get("vm") if isinstance(meta, dict) else None
        if isinstance(vm, str):
            vm_stream = follow_vm(vm)
        while True:
            source, name, payload = await events.get()
            if source == "vm":
                if name == "_connected":
                    await _backfill(http, vm_path, printer)
                elif name == "_error":
                    console.print(Text(f"(vm events stopped: {clean(str(payload), 200)})"))
                elif name == "session_event" and isinstance(payload, dict):
                    printer.event(payload)
                continue
            if name == "_error":
                raise payload
            if name == "_ended":
                raise fail("the orchestrator's event stream ended (was it destroyed?)")
            if not isinstance(payload, dict) or payload.get("run_id") != rid:
                continue
            printer.finish()
            if name == "run_step":
                out.print(_step_line(payload))
            elif name == "run_started":
                out.print(Text("run started", style="yellow"))
            elif name == "run_meta":
                meta = payload.get("meta")
                vm = meta.get("vm") if isinstance(meta, dict) else None
                if isinstance(vm, str) and vm_stream is None:
                    vm_stream = follow_vm(vm)
            elif name in ("run_completed", "run_failed", "run_cancelled"):
                # The vm's stream is another connection: its last events may still be
                # on the way. Print what arrived, then the rest from the vm's store.
                while not events.empty():
                    source, name, payload = events.get_nowait()
                    if source == "vm" and name == "session_event" and isinstance(payload, dict):
                        printer.event(payload)
                if vm_path:
                    await _backfill(http, vm_path, printer, quiet=True)
                return dict(check(await http.get(f"{base}/runs/{rid}")).json())
    finally:
        printer.finish()
        for s in (orch, vm_stream):
            if s is not None:
                await s.stop()


def watch(
    actor: Annotated[str, typer.Argument(help="actor type")],
    key: KeyArg,
    run_id: Annotated[str, typer.Argument(help="run id (the message id)")],
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """Follow a run live: its steps, and its agent's messages, tool calls and diffs.

    Exits when the run ends: 0 completed, 1 failed or cancelled."""
    rid = parse_run_id(run_id)

    async def go(_: Any) -> dict[str, Any]:
        async with raw_client(url, token) as http:
            return await watch_run(http, actor, key, rid)

    detail = run_client(url, token, go)
    status = str(detail.get("status"))
    line = Text(f"run {rid} ", style="bold") + styled(status)
    line.append(f" after {duration(detail)}", style="dim")
    out.print(line)
    if detail.get("error"):
        out.print(Text("error: ", style="red bold") + Text(error_text(detail["error"])))
    elif status == "completed":
        show_json(_summary(detail.get("result")))
    raise typer.Exit(FINISHED.get(status, 1))


def _summary(result: Any) -> Any:
    """The result without its bulky texts (the patch, the diff, long outputs): those are
    in ``agentvm run``."""
    if not isinstance(result, dict):
        return result
    return {
        k: (
            f"<{len(v)} characters>"
            if isinstance(v, str) and (k in ("patch", "diff") or len(v) > EXCERPT)
            else v
        )
        for k, v in result.items()
    }
