"""``agentvm vm ports KEY`` and ``agentvm vm open KEY PORT``: a sandbox's listening
ports and their preview URLs (``/vms/{key}/ports/{port}/``, docs/vm.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator import RemoteClient
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
    out,
    parse_key,
    print_json,
    raw_client,
    run_client,
)
from .cli_vm import vm_app


def preview_url(url: str, key: str, port: int, path: str = "") -> str:
    return (
        f"{url.rstrip('/')}/vms/{encode_key_path(parse_key(key))}/ports/{port}/{path.lstrip('/')}"
    )


@vm_app.command("ports")
def vm_ports(
    key: KeyArg, url: UrlOpt = DEFAULT, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """List the TCP ports listening inside a sandbox, with their preview URLs."""

    async def go(_: RemoteClient) -> Any:
        async with raw_client(url, token) as http:
            path = f"/vms/{encode_key_path(parse_key(key))}/ports"
            return check(await http.get(path)).json()["ports"]

    ports = run_client(url, token, go)
    for entry in ports:
        entry["url"] = preview_url(url, key, int(entry["port"]))
    if as_json:
        print_json(ports)
        return
    table = Table(show_edge=False)
    for column in ("port", "address", "pid", "process", "url"):
        table.add_column(column)
    for e in ports:
        # The process name comes from the sandbox: shown escaped, never as markup.
        cells = [clean(e.get(c) if e.get(c) is not None else "") for c in ("port", "address")]
        cells += [clean(e.get("pid") or ""), clean(e.get("process") or ""), e["url"]]
        table.add_row(*cells)
    out.print(table, highlight=False)


@vm_app.command("open")
def vm_open(
    key: KeyArg,
    port: Annotated[int, typer.Argument(min=1, max=65535, help="TCP port inside the sandbox")],
    path: Annotated[str, typer.Argument(help="path under the preview")] = "",
    url: UrlOpt = DEFAULT,
    check_port: Annotated[
        bool, typer.Option("--check/--no-check", help="check that something listens there")
    ] = True,
    token: TokenOpt = None,
) -> None:
    """Print the preview URL of PORT inside the sandbox (HTTP and WebSocket).

    With a token set, the URL needs ``Authorization: Bearer`` like the rest of the API."""
    if check_port:

        async def go(_: RemoteClient) -> Any:
            async with raw_client(url, token) as http:
                listing = f"/vms/{encode_key_path(parse_key(key))}/ports"
                return check(await http.get(listing)).json()["ports"]

        listening = {int(e["port"]) for e in run_client(url, token, go)}
        if port not in listening:
            console.print(
                f"warning: nothing listens on port {port} in vm {clean(key)}",
                style="yellow",
                markup=False,
                highlight=False,
            )
    print(preview_url(url, key, port, path))
