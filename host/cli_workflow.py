"""``agentvm workflow ...``: DAG workflow definitions and their runs.

``validate`` checks a JSON definition locally, exactly as the server does
(``POST /workflows/validate``): no server is needed. ``run``, ``put``, ``ls`` and
``show`` talk to the server's ``/workflows`` routes (docs/workflows.md).

Everything printed that came from the server may have been written by sandbox code
(an agent's text, an error): plain text, control characters escaped (``clean``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from orchestrator.dag import load_definition
from orchestrator.errors import InvalidRequest
from orchestrator.repo_upload import upload_local_repo

from .cli_common import (
    DEFAULT,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    check,
    clean,
    console,
    fail,
    out,
    parse_value,
    print_json,
    raw_client,
    run_client,
)
from .cli_runs import parse_run_id, styled

workflow_app = typer.Typer(no_args_is_help=True, help="DAG workflow definitions and runs.")

# A definition is a small JSON document; refuse to slurp a huge file by mistake.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Exit codes of ``run`` / ``show NAME RUN_ID``: by the run's status.
EXIT = {"completed": 0, "partial": 1, "failed": 1, "cancelled": 1}
STILL_RUNNING = 2
PREVIEW = 300
MARK = {"running": "…", "completed": "✓", "failed": "✗", "skipped": "-", "pending": "·"}


def _read_definition(file: Path) -> bytes:
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise fail(f"{file}: larger than {MAX_FILE_BYTES} bytes")
        return file.read_bytes()
    except OSError as err:
        raise fail(f"{file}: {err.strerror or err}") from None


def _json_file(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_definition(file))
    except ValueError as err:
        raise fail(f"{file}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise fail(f"{file}: a workflow definition is a JSON object")
    return data


def _request(url: str, token: str | None, method: str, path: str, **kw: Any) -> Any:
    async def go(_: Any) -> Any:
        async with raw_client(url, token) as http:
            return check(await http.request(method, path, **kw)).json()

    return run_client(url, token, go)


def _params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"-p takes key=value, not {item!r}")
        params[key] = parse_value(value)
    return params


# --- rendering --------------------------------------------------------------------------------


def _seconds(ms: Any) -> str:
    return f" {ms / 1000:.1f}s" if isinstance(ms, int | float) else ""


def step_label(sid: str, step: dict[str, Any]) -> Text:
    status = str(step.get("status") or "pending")
    label = Text(f"{MARK.get(status, '·')} ", style="bold") + Text(clean(sid), style="bold")
    label.append(" ")
    label.append_text(styled(status))
    label.append(_seconds(step.get("duration_ms")), style="dim")
    attempts = step.get("attempts", step.get("attempt"))
    if isinstance(attempts, int) and attempts > 1:
        label.append(f" attempts={attempts}", style="dim")
    if step.get("reason"):
        label.append(f" ({clean(step['reason'])})", style="dim")
    if isinstance(step.get("winner"), int):
        label.append(f" winner=candidate {step['winner']}", style="green")
    if step.get("vm"):
        label.append(f" vm={clean(step['vm'], 80)}", style="dim")
    return label


def view_tree(view: dict[str, Any]) -> Tree:
    """A run's view as a tree: one node per step (definition order), its text's head."""
    title = Text("workflow ", style="bold") + Text(clean(view.get("workflow", "?")), style="bold")
    if view.get("version") is not None:
        title.append(f" v{clean(view['version'])}")
    title.append(f" run {clean(view.get('run_id', '?'))} ")
    title.append_text(styled(view.get("status")))
    tree = Tree(title)
    raw_steps = view.get("steps")
    steps: dict[str, Any] = raw_steps if isinstance(raw_steps, dict) else {}
    raw_order = view.get("order")
    order: list[Any] = raw_order if isinstance(raw_order, list) and raw_order else list(steps)
    for sid in order:
        step = steps.get(sid)
        node = tree.add(step_label(str(sid), step if isinstance(step, dict) else {}))
        if not isinstance(step, dict):
            continue
        text = step.get("text") or step.get("text_preview")
        if isinstance(text, str) and text.strip():
            node.add(Text(clean(" ".join(text.split()), PREVIEW), style="dim"))
        error = step.get("error")
        if isinstance(error, dict):
            where = f"{error.get('group')}/{error.get('code')}: "
            node.add(Text(clean(where + str(error.get("message", "")), PREVIEW), style="red"))
    return tree


def _print_view(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    out.print(view_tree(view))
    error = view.get("error")
    if isinstance(error, dict) and view.get("status") not in ("completed",):
        out.print(Text(clean(f"error: {error.get('group')}/{error.get('code')}: "), style="red"))
        out.print(Text(clean(error.get("message", ""), 4 * PREVIEW)))


def _exit_for(view: dict[str, Any]) -> None:
    code = EXIT.get(str(view.get("status")), STILL_RUNNING)
    if code:
        raise typer.Exit(code)


# --- live view --------------------------------------------------------------------------------


class LiveRun:
    """A run's steps, kept up to date from its events."""

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view
        self.view.setdefault("steps", {})

    def step(self, sid: Any) -> dict[str, Any]:
        steps: dict[str, Any] = self.view["steps"]
        entry = steps.get(str(sid))
        if not isinstance(entry, dict):
            entry = steps[str(sid)] = {}
        return entry

    def apply(self, name: str, p: dict[str, Any]) -> None:
        if name == "workflow_started":
            if isinstance(p.get("steps"), list):
                self.view["order"] = [str(s) for s in p["steps"]]
            self.view["status"] = "running"
        elif name == "step_started":
            self.step(p.get("step")).update(
                status="running", attempts=p.get("attempt"), vm=p.get("vm")
            )
        elif name == "step_completed":
            self.step(p.get("step")).update(
                status="completed", duration_ms=p.get("duration_ms"), text=p.get("text")
            )
        elif name == "step_failed":
            self.step(p.get("step")).update(status="failed", error=p.get("error"))
        elif name == "step_skipped":
            self.step(p.get("step")).update(status="skipped", reason=p.get("reason"))
        elif name == "workflow_completed":
            self.view["status"] = p.get("status")
        elif name == "run_started":
            self.view["status"] = "running"


async def _sse(http: httpx.AsyncClient, path: str) -> AsyncIterator[tuple[str, Any]]:
    """Yield ``(event, payload)`` of an SSE stream until it ends."""
    async with http.stream("GET", path) as resp:
        if resp.status_code >= 400:
            await resp.aread()
            check(resp)
        name, data = "message", list[str]()
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    yield name, json.loads("\n".join(data))
                name, data = "message", []
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


async def watch_workflow_run(
    http: httpx.AsyncClient, view: dict[str, Any], deadline: float | None
) -> dict[str, Any]:
    """Draw the run's step tree live until it ends (or ``deadline``); its final view."""
    name, rid = view.get("workflow"), view.get("run_id")
    base = f"/workflows/{name}/runs/{rid}"
    live_run = LiveRun(dict(view))

    async def follow(live: Live) -> None:
        async for event, payload in _sse(http, f"{base}/events"):
            if isinstance(payload, dict):
                live_run.apply(event, payload)
                live.update(view_tree(live_run.view))

    # A console of its own: Live needs a real one (``out`` may be a lazy stand-in).
    with Live(view_tree(live_run.view), console=Console(), auto_refresh=False) as live:
        # The events route subscribes first, then checks the run: a run that ended
        # before it answers at once with an empty stream.
        task = asyncio.create_task(follow(live))
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), left)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        final: dict[str, Any] = check(await http.get(base)).json()
        live.update(Group(view_tree(final)), refresh=True)
    return final


# --- commands ---------------------------------------------------------------------------------


@workflow_app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a workflow definition (JSON)")],
    as_json: JsonOpt = False,
) -> None:
    """Check a definition: prints OK, or the error naming the field (exit 1)."""
    raw = _read_definition(file)
    try:
        defn = load_definition(raw)
    except InvalidRequest as err:
        if as_json:
            print_json({"valid": False, "error": err.to_dict()})
            raise typer.Exit(1) from None
        raise fail(err.message) from None
    if as_json:
        print_json({"valid": True, "name": defn.name, "version": defn.version})
        return
    summary = f"OK: {defn.name} v{defn.version}, {len(defn.steps)} steps"
    out.print(Text(clean(summary)), highlight=False)


@workflow_app.command()
def run(
    target: Annotated[str, typer.Argument(help="a definition FILE (run inline) or a NAME")],
    param: Annotated[
        list[str] | None,
        typer.Option("-p", "--param", help="key=value (JSON when it parses, else a string)"),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="draw the step tree live")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="stop waiting after this many seconds (exit 2)")
    ] = None,
    version: Annotated[int | None, typer.Option(help="NAME: this registered version")] = None,
    repo: Annotated[str | None, typer.Option(help="a repo put into /home/user/repo")] = None,
    vm_key: Annotated[str | None, typer.Option(help="an existing vm as the shared vm")] = None,
    keep_vm: Annotated[
        str | None, typer.Option(help="on_failure (default), always or never")
    ] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a workflow and wait for it: exit 0 completed, 1 partial/failed/cancelled,
    2 still running when --timeout ran out."""
    body: dict[str, Any] = {"params": _params(param)}
    for field, value in (("repo", repo), ("vm_key", vm_key), ("keep_vm", keep_vm)):
        if value is not None:
            body[field] = value
    path = Path(target)
    if path.suffix == ".json" or path.is_file():
        if version is not None:
            raise typer.BadParameter("--version is for a registered NAME, not a FILE")
        body["definition"] = _json_file(path)
        route = "/workflows/runs"
    else:
        if version is not None:
            body["version"] = version
        route = f"/workflows/{target}/runs"
    if not watch:
        body["wait"] = True
        if timeout is not None:
            body["timeout_ms"] = int(timeout * 1000)
    deadline = None if timeout is None else time.monotonic() + timeout

    async def go(_: Any) -> dict[str, Any]:
        async with raw_client(url, token) as http:
            # A local path is bundled and uploaded (the server never opens a path the
            # caller chose); a URL or blob: reference goes as is.
            payload = await upload_local_repo(http, body)
            view: dict[str, Any] = check(await http.post(route, json=payload)).json()
            if watch and not as_json:
                return await watch_workflow_run(http, view, deadline)
            if watch:  # --json --watch: no drawing, just wait for the end
                name, rid = view.get("workflow"), view.get("run_id")
                async for _event in _sse(http, f"/workflows/{name}/runs/{rid}/events"):
                    if deadline is not None and time.monotonic() > deadline:
                        break
                return dict(check(await http.get(f"/workflows/{name}/runs/{rid}")).json())
            return view

    view = run_client(url, token, go)
    if not (watch and not as_json):
        _print_view(view, as_json)
    _exit_for(view)


@workflow_app.command()
def put(
    file: Annotated[Path, typer.Argument(help="a workflow definition (JSON)")],
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a definition (a new version unless identical to the latest)."""
    data = _json_file(file)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"{file}: the definition has no name")
    result = _request(url, token, "PUT", f"/workflows/{name}", json=data)
    if as_json:
        print_json(result)
        return
    what = "registered" if result.get("created") else "unchanged, latest is"
    out.print(Text(clean(f"{result.get('name')}: {what} v{result.get('version')}")))


@workflow_app.command(name="ls")
def list_workflows(url: UrlOpt = DEFAULT, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The registered workflows."""
    found = _request(url, token, "GET", "/workflows")
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no workflows")
        return
    table = Table(title="workflows", show_edge=False)
    for col in ("name", "latest", "versions", "params", "description"):
        table.add_column(col, overflow="fold")
    for w in found:
        params = w.get("params") or []
        names = [p.get("name", "?") if isinstance(p, dict) else str(p) for p in params]
        versions = w.get("versions")
        table.add_row(
            Text(clean(w.get("name", "?"))),
            str(w.get("latest", "-")),
            str(len(versions) if isinstance(versions, list) else versions or "-"),
            Text(clean(", ".join(names))),
            Text(clean(w.get("description") or "", 120)),
        )
    out.print(table)


@workflow_app.command()
def show(
    name: Annotated[str, typer.Argument(help="the workflow's name")],
    run_id: Annotated[str | None, typer.Argument(help="a run id: show that run")] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A workflow's latest definition and its runs, or one run's step tree."""
    if run_id is not None:
        view = _request(url, token, "GET", f"/workflows/{name}/runs/{parse_run_id(run_id)}")
        _print_view(view, as_json)
        _exit_for(view)
        return
    definition = _request(url, token, "GET", f"/workflows/{name}")
    runs = _request(url, token, "GET", f"/workflows/{name}/runs").get("runs", [])
    if as_json:
        print_json({"definition": definition, "runs": runs})
        return
    steps = definition.get("steps") or []
    title = f"{definition.get('name')} v{definition.get('version')}: {len(steps)} steps"
    out.print(Text(clean(title), style="bold"))
    for s in steps:
        deps = s.get("depends_on") or []
        line = Text(f"  {clean(s.get('id', '?'))}")
        if deps:
            line.append(clean(f" <- {', '.join(map(str, deps))}"), style="dim")
        out.print(line)
    if not runs:
        console.print("no runs")
        return
    table = Table(title="runs", show_edge=False)
    for col in ("run", "version", "status", "steps"):
        table.add_column(col, overflow="fold")
    for r in runs:
        counts: dict[str, int] = {}
        for st in (r.get("steps") or {}).values():
            counts[str(st)] = counts.get(str(st), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table.add_row(str(r.get("run_id")), str(r.get("version")), styled(r.get("status")), summary)
    out.print(table)
