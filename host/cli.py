"""The ``agentvm`` command line.

``agentvm serve`` runs the engine and its HTTP server; ``send``, ``call``, ``ps``,
``history``, ``runs``, ``run``, ``cancel``, ``retry``, ``watch``, ``apply`` and
``vm ...`` talk to a running server (``--url``/``$AGENTVM_URL``,
``--token``/``$AGENTVM_TOKEN``); ``images build`` builds the sandbox image.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from .cli_common import (
    DEFAULT,
    JsonOpt,
    KeyArg,
    TokenOpt,
    UrlOpt,
    console,
    fail,
    http_json,
    out,
    parse_key,
    parse_value,
    plain_table,
    print_json,
    run_client,
    spinner,
    write_bytes,
)

if TYPE_CHECKING:
    from rich.tree import Tree
    from typer import _click as click

    from orchestrator import RemoteClient, WorkflowHistory

# Start-up time: ``agentvm --help`` and ``agentvm ps`` load only typer, the standard
# library and this package's light modules. The commands whose modules import rich,
# httpx or the orchestrator package are loaded when they run; ``--help`` lists them
# by these one-line helps (tests/test_cli_imports.py checks they match the real ones).
_RUN_COMMANDS = "host.cli_runs"
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "runs": (
        _RUN_COMMANDS,
        "List the runs of an orchestrator (``agentvm runs automator main``) or of all.",
    ),
    "run": (_RUN_COMMANDS, "Show one run: its steps as a tree, then its result or error."),
    "cancel": (
        _RUN_COMMANDS,
        "Cancel a queued or running run (the step in flight is interrupted).",
    ),
    "retry": (_RUN_COMMANDS, "Run a failed or cancelled run again from the step that failed."),
    "watch": (
        _RUN_COMMANDS,
        "Follow a run live: its steps, and its agent's messages, tool calls and diffs.",
    ),
    "apply": (_RUN_COMMANDS, "Apply a run's fix to a local clone as commits (``git am --3way``)."),
    "vm": ("host.cli_vm:vm_app", "Sandboxes (the vm actor): exec, files, shell."),
    "workflow": ("host.cli_workflow:workflow_app", "DAG workflow definitions and runs."),
    "cluster": (
        "host.cli_cluster:cluster_app",
        "Hosts sharing the database: their leases, load and health.",
    ),
}
# The order of ``--help`` (eager commands are defined in this module).
ORDER = (
    "serve", "send", "call", "ps", "history",
    "runs", "run", "cancel", "retry", "watch", "apply",
    "images", "vm", "workflow", "cluster",
)  # fmt: skip


def load_lazy(name: str) -> click.Command:
    """The real command behind a lazy name (imports its module), built as it was when
    registered on the top-level app (no completion options of its own)."""
    import importlib

    spec, _ = LAZY_COMMANDS[name]
    holder = typer.Typer(add_completion=False)
    if spec == _RUN_COMMANDS:
        from .cli_runs import register

        register(holder)
    else:
        module, _, attr = spec.partition(":")
        holder.add_typer(getattr(importlib.import_module(module), attr), name=name)
    group = typer.main.get_command(holder)
    assert isinstance(group, TyperGroup)
    return group.commands[name]


class _Stub(TyperCommand):
    """Stands for a lazy command in the top-level help listing only."""


class LazyGroup(TyperGroup):
    """The top-level group: lazy commands are loaded when they are invoked."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        commands = dict(self.commands)
        for name, (_, short) in LAZY_COMMANDS.items():
            commands.setdefault(name, _Stub(name=name, help=short, callback=None))
        first = {n: commands.pop(n) for n in ORDER if n in commands}
        self.commands = {**first, **commands}

    def _real(self, name: str) -> click.Command | None:
        cmd = self.commands.get(name)
        if isinstance(cmd, _Stub):
            cmd = self.commands[name] = load_lazy(name)
        return cmd

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in LAZY_COMMANDS:
            self._real(args[0])
        return super().resolve_command(ctx, args)


# Plain click help (rich's help formatter alone costs ~250 ms of imports).
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    cls=LazyGroup,
    rich_markup_mode=None,
)
images_app = typer.Typer(no_args_is_help=True, help="Sandbox images.")
app.add_typer(images_app, name="images")


def _registry(spec: str | None = None) -> Any:
    """The registry to serve: ``spec`` ('module:function') or the built-in one."""
    if spec:
        from .server import load_registry

        return load_registry(spec)
    from .app import build_registry

    return build_registry()


# --- serve ---------------------------------------------------------------------------------


@app.command()
def serve(
    db: Annotated[str | None, typer.Option(help="SQLite file (default: $AGENTVM_DB)")] = None,
    bind: Annotated[str | None, typer.Option(help="address (default: $AGENTVM_BIND)")] = None,
    port: Annotated[int | None, typer.Option(help="port, 0 = any free (default 6420)")] = None,
    token: Annotated[
        str | None, typer.Option(help="require this bearer token (default: $AGENTVM_TOKEN)")
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(help="'module:function' returning the Registry (default: built-in)"),
    ] = None,
) -> None:
    """Run the engine (recovering every pending workflow) and the HTTP API until Ctrl-C."""
    import logging

    from orchestrator import AgentVMError, Engine, EngineConfig

    from .server import InsecureBindError, ServerSettings, check_bind
    from .server import serve as serve_http
    from .server.run import run_loop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServerSettings()
    updates: dict[str, Any] = {}
    if bind is not None:
        updates["bind"] = bind
    if port is not None:
        updates["port"] = port
    if token is not None:
        updates["token"] = token or None
    if registry is not None:
        updates["registry"] = registry
    settings = settings.model_copy(update=updates)
    try:
        check_bind(settings.bind, settings.token)
    except InsecureBindError as exc:
        raise fail(str(exc), 2) from None
    config = EngineConfig()
    if db:
        config = config.model_copy(update={"db": db})
    runtime: Any
    if settings.registry:
        # A custom registry runs on the engine alone (no sandbox manager).
        try:
            runtime = Engine(_registry(settings.registry), config=config)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            raise fail(f"cannot load registry {settings.registry!r}: {exc}", 2) from None
    else:
        from .app import host_runtime

        runtime = host_runtime(config)
    started = time.monotonic()

    def ready(url: str) -> None:
        console.print(
            f"[green]agentvm engine running[/] on {config.db} "
            f"(started in {time.monotonic() - started:.2f}s); "
            f"listening on {url}"
            + (" (token required)" if settings.token else "")
            + ". Ctrl-C stops.",
            highlight=False,
            soft_wrap=True,
        )

    try:
        run_loop(serve_http(runtime, settings, on_ready=ready))
    except AgentVMError as exc:  # e.g. the Docker engine is down
        raise fail(f"cannot start: {exc}", 1) from None
    console.print("stopped")


# --- images ------------------------------------------------------------------------------


@images_app.command("build")
def images_build(
    bundles: list[str] = typer.Argument(None, help="bundles (default: common)"),
    rebuild: bool = typer.Option(False, help="build even if the image exists"),
) -> None:
    """Build the sandbox image for a bundle set (once; tagged by content hash)."""
    from vm_images.builder import ensure_image

    with console.status("building sandbox image...") as status:

        def progress(line: str) -> None:
            status.update(line)
            console.log(line)

        tag = ensure_image(bundles or None, progress=progress, rebuild=rebuild)
    out.print(tag)


# --- actors: send, call, ps -----------------------------------------------------------------


@app.command()
def send(
    actor: Annotated[str, typer.Argument(help="actor type")],
    key: KeyArg,
    queue: Annotated[str, typer.Argument(help="queue name")],
    body: Annotated[str, typer.Argument(help="message body (JSON; else a string)")] = "null",
    wait: Annotated[bool, typer.Option(help="wait for the consumer to complete it")] = False,
    timeout: Annotated[float | None, typer.Option(help="seconds to wait (with --wait)")] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a message to an actor's queue (get-or-create the actor)."""
    payload = parse_value(body)

    async def go(client: RemoteClient) -> Any:
        handle = client[actor].get_or_create(parse_key(key))
        with spinner(f"waiting for {actor} to complete the message...") if wait else _null():
            return await handle.send(queue, payload, wait=wait, timeout=timeout)

    result = run_client(url, token, go)
    if as_json:
        print_json(result.model_dump())
        if result.status in ("failed", "cancelled"):
            raise typer.Exit(1)
        return
    if result.status == "completed":
        console.print(f"[green]completed[/] (message {result.message_id})")
        print_json(result.response)
    elif result.status in ("failed", "cancelled"):
        from rich.text import Text

        from .cli_runs import clean

        # A run queue's answer: the run ended without a result (see `agentvm run`).
        line = Text(f"{result.status}", style="red")
        line.append(f" (run {result.message_id})")
        error = getattr(result, "error", None)
        if isinstance(error, dict):
            line.append(f": {clean(error.get('group'))}/{clean(error.get('code'))}: ")
            line.append(clean(error.get("message", "")))
        console.print(line)
        raise typer.Exit(1)
    elif result.status == "timed_out":
        console.print(f"[yellow]timed out[/]: message {result.message_id} is still queued")
        raise typer.Exit(3)
    else:
        out.print(f"queued message {result.message_id}", highlight=False)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def call(
    actor: Annotated[str, typer.Argument(help="actor type")],
    key: KeyArg,
    action: Annotated[str, typer.Argument(help="action name")],
    args: Annotated[
        list[str] | None, typer.Argument(help="arguments, each JSON when it parses")
    ] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Call an action: ``agentvm call counter main increment 5``."""
    values = [parse_value(a) for a in args or []]

    async def go(client: RemoteClient) -> Any:
        with spinner(f"calling {actor}.{action}..."):
            return await client[actor].get_or_create(parse_key(key)).call(action, *values)

    output = run_client(url, token, go)
    if as_json:
        print_json({"output": output})
    elif isinstance(output, bytes):
        write_bytes(output)
    elif isinstance(output, str):
        out.print(output, highlight=False, markup=False)
    else:
        print_json(output)


@app.command()
def ps(
    name: Annotated[str | None, typer.Option(help="only this actor type")] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List actors (and sandboxes: the ``vm`` actors)."""
    found = http_json(url, token, "GET", "/actors", params={"name": name} if name else None)
    actors = found.get("actors") if isinstance(found, dict) else None
    if not isinstance(actors, list):
        raise fail(f"{url} answered GET /actors without a list of actors")
    if as_json:
        print_json({"actors": actors})
        return
    rows = [
        (
            a.get("name", ""),
            ",".join(map(str, a.get("key") or [])),
            "yes" if a.get("awake") else "asleep",
            a.get("workflow_status") or "-",
            _date(a.get("created_at")),
            a.get("actor_id", ""),
        )
        for a in actors
        if isinstance(a, dict)
    ]
    text = plain_table(("name", "key", "awake", "workflow", "created", "actor_id"), rows, "actors")
    vms = [(r[1], "running" if r[2] == "yes" else "stopped") for r in rows if r[0] == "vm"]
    if vms:
        text += "\n" + plain_table(("key", "state"), vms, "sandboxes")
    write_bytes(text.encode())


def _date(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- history -----------------------------------------------------------------------------


_STATUS_STYLE = {
    "completed": "green",
    "running": "yellow",
    "waiting": "cyan",
    "retrying": "magenta",
    "failed": "red",
    "rolled_back": "red",
}


def render_history(history: Any) -> Tree:
    """The workflow history as a tree of name paths with statuses and timings.

    Names and errors are printed as plain text (they may come from sandbox code)."""
    from rich.text import Text
    from rich.tree import Tree

    from .cli_runs import clean, history_tree

    style = _STATUS_STYLE.get(history.workflow_status or "", "white")
    title = Text(clean(history.name), style="bold")
    title.append(f" {clean(history.key)} workflow: ")
    title.append(clean(history.workflow_status), style=style)
    return history_tree(Tree(title), [e.model_dump() for e in history.entries])


def _local_history(actor: str, key: str, db: str) -> WorkflowHistory:
    """Read the history straight from a database file (no server needed)."""
    from orchestrator import Inspector
    from orchestrator.keys import decode_key_path

    async def main() -> WorkflowHistory:
        async with await Inspector.open(db) as inspector:
            info = await inspector.find_actor(actor, decode_key_path(key))
            if info is None:
                raise typer.BadParameter(f"no actor {actor!r} with key {key!r}")
            return await inspector.history(info.actor_id)

    import asyncio

    return asyncio.run(main())


@app.command()
def history(
    actor: Annotated[str, typer.Argument(help="actor type")],
    key: KeyArg,
    db: Annotated[
        str | None, typer.Option(help="read this SQLite file directly instead of the server")
    ] = None,
    url: UrlOpt = DEFAULT,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an actor's workflow history as a tree (statuses, attempts, timings)."""
    if db:
        result = _local_history(actor, key, db)
    else:

        async def go(client: RemoteClient) -> WorkflowHistory:
            return await client[actor].get(parse_key(key)).history()

        result = run_client(url, token, go)
    if as_json:
        out.print_json(json.dumps(result.model_dump()))
    else:
        out.print(render_history(result))


def _plain_values() -> None:
    """typer (0.29) converts every argument's value with a pydantic ``TypeAdapter``;
    importing pydantic for that is half of ``agentvm ps``'s start-up. A ``str`` or
    ``bool`` parameter needs no conversion (click already hands over a str or a bool),
    so those skip it; any other value or type goes through typer's own conversion.
    A typer without these internals is left alone (tests/test_cli_imports.py notices)."""
    try:
        from dataclasses import dataclass

        from typer import _coercion, core

        build = core.build_runtime_param
        RuntimeParam, TypeDescriptor = _coercion.RuntimeParam, _coercion.TypeDescriptor
    except (ImportError, AttributeError):
        return

    @dataclass(frozen=True)
    class Plain(RuntimeParam):  # type: ignore[misc,valid-type]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if type(value) is self.annotation:
                return value
            full = build(TypeDescriptor(self.annotation, self.parameter_info, None))
            return full._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        if descriptor.annotation in (str, bool) and descriptor.file_annotation is None:
            return Plain(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation)
        return build(descriptor)

    core.build_runtime_param = build_runtime_param


def main() -> None:
    _plain_values()
    app()


if __name__ == "__main__":
    main()
