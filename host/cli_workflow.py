"""``agentvm workflow ...``: DAG workflow definitions (``validate`` for now).

``validate`` checks a JSON definition locally, exactly as the server does
(``POST /workflows/validate``): no server is needed. Running definitions is the
next part of issue 11.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from orchestrator.dag import load_definition
from orchestrator.errors import InvalidRequest

from .cli_common import JsonOpt, clean, fail, out, print_json

workflow_app = typer.Typer(no_args_is_help=True, help="DAG workflow definitions.")

# A definition is a small JSON document; refuse to slurp a huge file by mistake.
MAX_FILE_BYTES = 4 * 1024 * 1024


@workflow_app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a workflow definition (JSON)")],
    as_json: JsonOpt = False,
) -> None:
    """Check a definition: prints OK, or the error naming the field (exit 1)."""
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise fail(f"{file}: larger than {MAX_FILE_BYTES} bytes")
        raw = file.read_bytes()
    except OSError as err:
        raise fail(f"{file}: {err.strerror or err}") from None
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
