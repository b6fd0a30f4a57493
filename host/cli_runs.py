"""``agentvm runs|run|cancel|retry|watch|apply``: operating runs over HTTP.

A run is one message sent to a run queue (its id is the ``message_id``). These
commands read the routes of docs/http.md ("Runs"); ``watch`` follows the
orchestrator's ``run_*`` broadcasts and, once the run names its vm
(``meta.vm``), that vm's ``session_event`` broadcasts.

Everything printed that came from the server may have been written by sandbox
code (an agent's messages, tool titles, diffs, error texts), so it is printed as
plain text (never rich markup) with control characters escaped: a hostile agent
must not be able to drive the operator's terminal with escape sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import re
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from orchestrator.keys import encode_key_path

from .cli_common import (
    DEFAULT,
    JsonOpt,
    KeyArg,
    TokenOpt,
    UrlOpt,
    check,
    console,
    fail,
    out,
    parse_key,
    raw_client,
    run_client,
)

RUN_EVENTS = ("run_started", "run_step", "run_meta", "run_completed", "run_failed", "run_cancelled")
FINISHED = {"completed": 0, "failed": 1, "cancelled": 1}
STATUS_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "retrying": "magenta",
    "waiting": "cyan",
}
# Longest excerpt of agent text (a prompt, a tool input or output) printed by ``watch``.
EXCERPT = 2000
# How long ``watch`` waits for an event stream to be established before giving up.
CONNECT_TIMEOUT_S = 30.0

# C0 controls but \t and \n, DEL, C1 controls (\x9b is a CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: Any, limit: int | None = None) -> str:
    """Server text made safe for a terminal: control characters shown escaped."""
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"... ({len(s) - limit} more characters)"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k): _clean_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_value(v) for v in value]
    return value


def show_json(value: Any) -> None:
    out.print_json(json.dumps(_clean_value(value), ensure_ascii=False), highlight=False)


def _styled(status: Any) -> Text:
    s = clean(status or "-")
    return Text(s, style=STATUS_STYLE.get(s, ""))


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: dict[str, Any]) -> str:
    start, end = run.get("started_at"), run.get("finished_at")
    if not isinstance(start, int | float):
        return "-"
    if isinstance(end, int | float):
        return f"{end - start:.1f}s"
    return f"{time.time() - start:.1f}s…"


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        where = f"{error.get('group')}/{error.get('code')}"
        return clean(f"{where}: {error.get('message', '')}")
    return clean(error) if error else ""


def _actor_path(actor: str, key: str) -> str:
    return f"/actors/{actor}/{encode_key_path(parse_key(key))}"


def _run_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"a run id is a number, not {text!r}") from None
    if value < 1:
        raise typer.BadParameter("a run id is a positive number")
    return value


def _request(url: str, token: str | None, method: str, path: str, **kw: Any) -> Any:
    """One JSON request; the server's typed error becomes a CLI error (exit 1)."""

    async def go(_: Any) -> Any:
        async with raw_client(url, token) as http:
            return check(await http.request(method, path, **kw)).json()

    return run_client(url, token, go)


# --- runs, run ---------------------------------------------------------------------------


def runs_table(runs: list[dict[str, Any]], with_actor: bool) -> Table:
    table = Table(title="runs", show_edge=False)
    columns = (["actor", "key"] if with_actor else []) + [
        "run",
        "queue",
        "status",
        "created",
        "duration",
        "error",
    ]
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in runs:
        cells: list[Text | str] = []
        if with_actor:
            key = r.get("key")
            cells += [
                Text(clean(r.get("name", "?"))),
                Text(clean(",".join(key) if isinstance(key, list) else key or "")),
            ]
        cells += [
            str(r.get("run_id", "?")),
            Text(clean(r.get("queue", ""))),
            _styled(r.get("status")),
            _when(r.get("created_at")),
            _duration(r),
            Text(_error_text(r.get("error")), style="red"),
        ]
        table.add_row(*cells)
    return table


def runs(
    actor: Annotated[str | None, typer.Argument(help="actor type (omit with --all)")] = None,
    key: Annotated[str | None, typer.Argument(help="actor key (omit with --all)")] = None,
    status: Annotated[
        str | None, typer.Option(help="only runs in this status (queued, running, ...)")
    ] = None,
    all_actors: Annotated[
        bool, typer.Option("--all", help="runs of every actor (GET /runs)")
    ] = False,
    name: Annotated[str | None, typer.Option(help="with --all: only this actor type")] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the runs of an orchestrator (``agentvm runs automator main``) or of all."""
    params: dict[str, str] = {}
    if status:
        params["status"] = status
    if all_actors:
        if actor or key:
            raise typer.BadParameter("--all takes no ACTOR KEY (use --name to filter)")
        if name:
            params["name"] = name
        path = "/runs"
    else:
        if actor is None or key is None:
            raise typer.BadParameter("give ACTOR and KEY, or --all")
        path = f"{_actor_path(actor, key)}/runs"
    found = _request(url, token, "GET", path, params=params).get("runs", [])
    if as_json:
        show_json({"runs": found})
        return
    if not found:
        console.print("no runs" + (f" with status {clean(status)}" if status else ""))
        return
    out.print(runs_table(found, with_actor=all_actors))


def history_tree(root: Tree, entries: list[dict[str, Any]]) -> Tree:
    """History entries (the inspector's shape) as a tree of their name paths."""
    nodes: dict[str, Tree] = {"": root}
    for e in entries:
        path = str(e.get("path", ""))
        parent_path, _, leaf = path.rpartition("/")
        parent = nodes.get(parent_path)
        if parent is None:  # a scope (loop iteration, branch) with no entry of its own
            grand, _, scope = parent_path.rpartition("/")
            parent = nodes.get(grand, root).add(Text(clean(scope), style="dim"))
            nodes[parent_path] = parent
        label = Text(clean(leaf), style="bold")
        label.append(f" {clean(e.get('kind', ''))} ", style="dim")
        label.append_text(_styled(e.get("status")))
        label.append(f" attempts={e.get('attempts', 0)}")
        start, end = e.get("started_at"), e.get("finished_at")
        if isinstance(start, int | float):
            when = datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S.%f")[:-3]
            label.append(f" started={when}", style="dim")
            if isinstance(end, int | float):
                label.append(f" {1000 * (end - start):.1f} ms")
        if e.get("error"):
            label.append(" " + _error_text(e["error"]), style="red")
        nodes[path] = parent.add(label)
    return root


def run(
    actor: Annotated[str, typer.Argument(help="actor type")],
    key: KeyArg,
    run_id: Annotated[str, typer.Argument(help="run id (the message id)")],
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run: its steps as a tree, then its result or error."""
    rid = _run_id(run_id)
    detail = _request(url, token, "GET", f"{_actor_path(actor, key)}/runs/{rid}")
    if as_json:
        show_json(detail)
        return
    title = Text(f"run {rid} ", style="bold")
    title.append(clean(detail.get("queue", "")))
    title.append(" ")
    title.append_text(_styled(detail.get("status")))
    title.append(
        f"  created {_when(detail.get('created_at'))}, took {_duration(detail)}", style="dim"
    )
    if detail.get("meta"):
        title.append(f"  meta {clean(detail['meta'])}", style="dim")
    out.print(history_tree(Tree(title), detail.get("history") or []))
    if detail.get("error"):
        out.print(Text("error: ", style="red bold") + Text(_error_text(detail["error"])))
        metadata = detail["error"].get("metadata") if isinstance(detail["error"], dict) else None
        if metadata:
            show_json(metadata)
    elif detail.get("status") == "completed":
        out.print(Text("result:", style="green bold"))
        show_json(detail.get("result"))
    if detail.get("status") in ("failed", "cancelled"):
        raise typer.Exit(1)


# --- cancel, retry -------------------------------------------------------------------------


def _act(verb: str) -> Callable[..., None]:
    def command(
        actor: Annotated[str, typer.Argument(help="actor type")],
        key: KeyArg,
        run_id: Annotated[str, typer.Argument(help="run id (the message id)")],
        url: UrlOpt = DEFAULT,
        token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        rid = _run_id(run_id)
        info = _request(url, token, "POST", f"{_actor_path(actor, key)}/runs/{rid}/{verb}")
        if as_json:
            show_json(info)
            return
        line = Text(f"run {rid}: ")
        line.append_text(_styled(info.get("status")))
        out.print(line)

    command.__doc__ = {
        "cancel": "Cancel a queued or running run (the step in flight is interrupted).",
        "retry": "Run a failed or cancelled run again from the step that failed.",
    }[verb]
    return command


# --- watch ---------------------------------------------------------------------------------


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
                line.append(f" {_error_text(data['error'])}", style="red")
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
                out.print(Text(f"  {mark} {title} ", style="dim") + _styled(status))
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
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
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
    line.append_text(_styled(status))
    attempt = p.get("attempt", p.get("attempts"))
    if isinstance(attempt, int) and attempt > 1:
        line.append(f" (attempt {attempt})", style="dim")
    if p.get("error"):
        line.append(" " + _error_text(p["error"]), style="red")
    return line


async def watch_run(http: httpx.AsyncClient, actor: str, key: str, rid: int) -> dict[str, Any]:
    """Print the run's steps and its vm's session events until it ends; its final detail."""
    base = _actor_path(actor, key)
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
        out.print(header + Text(" ") + _styled(detail.get("status")))
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
    rid = _run_id(run_id)

    async def go(_: Any) -> dict[str, Any]:
        async with raw_client(url, token) as http:
            return await watch_run(http, actor, key, rid)

    detail = run_client(url, token, go)
    status = str(detail.get("status"))
    line = Text(f"run {rid} ", style="bold") + _styled(status)
    line.append(f" after {_duration(detail)}", style="dim")
    out.print(line)
    if detail.get("error"):
        out.print(Text("error: ", style="red bold") + Text(_error_text(detail["error"])))
    elif status == "completed":
        show_json(_summary(detail.get("result")))
    raise typer.Exit(FINISHED.get(status, 1))


def _summary(result: Any) -> Any:
    """The result without its bulkiest fields (the patch, the diff): see ``agentvm run``."""
    if not isinstance(result, dict):
        return result
    return {
        k: (f"<{len(v)} characters>" if k in ("patch", "diff") and isinstance(v, str) else v)
        for k, v in result.items()
    }


# --- apply ---------------------------------------------------------------------------------


def _git(repo: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, check=False
    )


def apply(
    run_id: Annotated[str, typer.Argument(help="run id of the fix (the message id)")],
    actor: Annotated[str, typer.Option(help="orchestrator actor type")] = "automator",
    key: Annotated[str, typer.Option(help="orchestrator key")] = "main",
    repo: Annotated[Path, typer.Option(help="the local clone to apply it to")] = Path("."),
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
) -> None:
    """Apply a run's fix to a local clone as commits (``git am --3way``)."""
    rid = _run_id(run_id)
    if not repo.is_dir() or _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise fail(f"{clean(str(repo))} is not a git repository")

    async def go(_: Any) -> bytes:
        async with raw_client(url, token) as http:
            return check(await http.get(f"{_actor_path(actor, key)}/runs/{rid}/patch")).content

    patch = run_client(url, token, go)
    if not patch.strip():
        raise fail(f"run {rid} has an empty patch (nothing changed)")
    before = _git(repo, "rev-parse", "HEAD").stdout.decode().strip()
    res = _git(repo, "am", "--3way", "--keep-cr", input=patch)
    if res.returncode != 0:
        message = (res.stdout + res.stderr).decode(errors="replace").strip()
        _git(repo, "am", "--abort")  # leave the clone as it was
        console.print(Text(clean(message, 4 * EXCERPT)))
        raise fail(f"the patch of run {rid} does not apply to {clean(str(repo))} (nothing changed)")
    span = f"{before}..HEAD" if before else "HEAD"
    log = _git(repo, "log", "--oneline", "--no-decorate", span).stdout.decode(errors="replace")
    out.print(Text(clean(log.strip() or "(no commits)")))
    console.print(f"applied the patch of run {rid} to {clean(str(repo))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the run commands to the top-level ``agentvm`` app."""
    app.command()(runs)
    app.command()(run)
    app.command(name="cancel")(_act("cancel"))
    app.command(name="retry")(_act("retry"))
    app.command()(watch)
    app.command()(apply)
