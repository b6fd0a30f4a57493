"""The ``agentvm`` command line.

``agentvm serve`` runs the engine with the built-in actors until interrupted;
``agentvm images build`` builds the sandbox image; ``agentvm history`` shows a
workflow's history from the local database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.tree import Tree

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
images_app = typer.Typer(no_args_is_help=True, help="Sandbox images.")
app.add_typer(images_app, name="images")

console = Console(stderr=True)
out = Console()


def _registry() -> Any:
    """The actor types this host runs: for now a few of the workflow examples
    (the built-in orchestrators and the vm actor join them in later issues)."""
    from examples import workflows as ex
    from orchestrator import Registry

    registry = Registry({})
    for part in (
        ex.counter_loop(),
        ex.request_response(),
        ex.queue_worker(),
        ex.approval_gate(),
        ex.progress_broadcast(),
    ):
        for name, definition in part.actors.items():
            registry.add(name, definition)
    return registry


@app.command()
def serve(
    db: str = typer.Option(None, help="SQLite file (default: $AGENTVM_DB)"),
) -> None:
    """Run the engine (recovering every pending workflow) until Ctrl-C."""
    from orchestrator import Engine, EngineConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = EngineConfig()
    if db:
        config = config.model_copy(update={"db": db})

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        async with Engine(_registry(), config=config) as engine:
            awake = len(engine.instances)
            console.print(
                f"[green]agentvm engine running[/] on {config.db} "
                f"({awake} actors recovered in {time.monotonic() - started:.2f}s). Ctrl-C stops."
            )
            await stop.wait()
        console.print("stopped")

    asyncio.run(main())


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


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]


_STATUS_STYLE = {
    "completed": "green",
    "running": "yellow",
    "waiting": "cyan",
    "retrying": "magenta",
    "failed": "red",
    "rolled_back": "red",
}


def render_history(history: Any) -> Tree:
    """The workflow history as a tree of name paths with statuses and timings."""
    style = _STATUS_STYLE.get(history.workflow_status or "", "white")
    root = Tree(
        f"[bold]{history.name}[/] {history.key} workflow: [{style}]{history.workflow_status}[/]"
    )
    nodes: dict[str, Tree] = {"": root}
    for entry in history.entries:  # already in the order they were first recorded
        parent_path, _, leaf = entry.path.rpartition("/")
        parent = nodes.get(parent_path)
        if parent is None:
            # An intermediate scope (a loop iteration or branch) with no entry of its own.
            grand, _, name = parent_path.rpartition("/")
            parent = nodes.get(grand, root).add(f"[dim]{name}[/]")
            nodes[parent_path] = parent
        st = _STATUS_STYLE.get(entry.status, "white")
        took = ""
        if entry.started_at and entry.finished_at:
            took = f" {1000 * (entry.finished_at - entry.started_at):.1f} ms"
        label = (
            f"{leaf} [dim]{entry.kind}[/] [{st}]{entry.status}[/]"
            f" attempts={entry.attempts} started={_when(entry.started_at)}{took}"
        )
        if entry.error:
            msg = entry.error.get("message") if isinstance(entry.error, dict) else entry.error
            label += f" [red]{msg}[/]"
        nodes[entry.path] = parent.add(label)
    return root


@app.command()
def history(
    actor: str = typer.Argument(..., help="actor type"),
    key: str = typer.Argument(..., help="actor key (parts joined by ',')"),
    db: str = typer.Option(None, help="SQLite file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show an actor's workflow history as a tree."""
    from orchestrator import Engine, EngineConfig
    from orchestrator.keys import decode_key_path

    config = EngineConfig()
    if db:
        config = config.model_copy(update={"db": db})

    async def main() -> Any:
        engine = Engine(_registry(), config=config)
        await engine.store.open()
        try:
            rec = await engine.store.find_actor(actor, decode_key_path(key))
            if rec is None:
                raise typer.BadParameter(f"no actor {actor!r} with key {key!r}")
            engine._running = True
            return await engine.history(rec.actor_id)
        finally:
            await engine.store.close()

    result = asyncio.run(main())
    if as_json:
        out.print_json(json.dumps(result.model_dump()))
    else:
        out.print(render_history(result))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
