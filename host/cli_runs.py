"""``agentvm runs|run|cancel|retry|watch|apply``: operating runs over HTTP.

A run is one message sent to a run queue (its id is the ``message_id``). These
commands read the runs routes (docs/http.md); ``watch`` is in ``cli_watch``.

Everything printed that came from the server may have been written by sandbox
code (an agent's messages, tool titles, diffs, error texts), so it is printed as
plain text (never rich markup) with control characters escaped: a hostile agent
must not be able to drive the operator's terminal with escape sequences.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
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
    clean,
    console,
    fail,
    out,
    parse_key,
    raw_client,
    run_client,
)

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


def styled(status: Any) -> Text:
    s = clean(status or "-")
    return Text(s, style=STATUS_STYLE.get(s, ""))


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(run: dict[str, Any]) -> str:
    start, end = run.get("started_at"), run.get("finished_at")
    if not isinstance(start, int | float):
        return "-"
    if isinstance(end, int | float):
        return f"{end - start:.1f}s"
    return f"{time.time() - start:.1f}s…"


def error_text(error: Any) -> str:
    if isinstance(error, dict):
        where = f"{error.get('group')}/{error.get('code')}"
        return clean(f"{where}: {error.get('message', '')}")
    return clean(error) if error else ""


def actor_path(actor: str, key: str) -> str:
    return f"/actors/{actor}/{encode_key_path(parse_key(key))}"


def parse_run_id(text: str) -> int:
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
            styled(r.get("status")),
            _when(r.get("created_at")),
            duration(r),
            Text(error_text(r.get("error")), style="red"),
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
        path = f"{actor_path(actor, key)}/runs"
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
        label.append_text(styled(e.get("status")))
        label.append(f" attempts={e.get('attempts', 0)}")
        start, end = e.get("started_at"), e.get("finished_at")
        if isinstance(start, int | float):
            when = datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S.%f")[:-3]
            label.append(f" started={when}", style="dim")
            if isinstance(end, int | float):
                label.append(f" {1000 * (end - start):.1f} ms")
        if e.get("error"):
            label.append(" " + error_text(e["error"]), style="red")
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
    rid = parse_run_id(run_id)
    detail = _request(url, token, "GET", f"{actor_path(actor, key)}/runs/{rid}")
    if as_json:
        show_json(detail)
        return
    title = Text(f"run {rid} ", style="bold")
    title.append(clean(detail.get("queue", "")))
    title.append(" ")
    title.append_text(styled(detail.get("status")))
    title.append(
        f"  created {_when(detail.get('created_at'))}, took {duration(detail)}", style="dim"
    )
    if detail.get("meta"):
        title.append(f"  meta {clean(detail['meta'])}", style="dim")
    out.print(history_tree(Tree(title), detail.get("history") or []))
    if detail.get("error"):
        out.print(Text("error: ", style="red bold") + Text(error_text(detail["error"])))
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
        rid = parse_run_id(run_id)
        info = _request(url, token, "POST", f"{actor_path(actor, key)}/runs/{rid}/{verb}")
        if as_json:
            show_json(info)
            return
        line = Text(f"run {rid}: ")
        line.append_text(styled(info.get("status")))
        out.print(line)

    command.__doc__ = {
        "cancel": "Cancel a queued or running run (the step in flight is interrupted).",
        "retry": "Run a failed or cancelled run again from the step that failed.",
    }[verb]
    return command


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
    rid = parse_run_id(run_id)
    if not repo.is_dir() or _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise fail(f"{clean(str(repo))} is not a git repository")

    async def go(_: Any) -> bytes:
        async with raw_client(url, token) as http:
            return check(await http.get(f"{actor_path(actor, key)}/runs/{rid}/patch")).content

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
    from .cli_watch import watch

    app.command()(watch)
    app.command()(apply)
