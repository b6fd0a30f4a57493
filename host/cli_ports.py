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


def preview_url(url: str, template: str, port: int, path: str = "") -> str:
    """The browser-openable link (its capability is in the server's template)."""
    return url.rstrip("/") + template.format(port=port) + path.lstrip("/")


async def _listing(url: str, token: str | None, key: str) -> dict[str, Any]:
    async with raw_client(url, token) as http:
        path = f"/vms/{encode_key_path(parse_key(key))}/ports"
        listing: dict[str, Any] = check(await http.get(path)).json()
        return listing


@vm_app.command("ports")
def vm_ports(
    key: KeyArg, url: UrlOpt = DEFAULT, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """List the TCP ports listening inside a sandbox, with their preview URLs."""

    async def go(_: RemoteClient) -> Any:
        return await _listing(url, token, key)

    listing = run_client(url, token, go)
    ports = listing["ports"]
    for entry in ports:
        entry["url"] = url.rstrip("/") + entry["preview"]
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
    """Print the preview URL of PORT inside the sandbox (HTTP and WebSocket): a link a
    browser can open (it carries a capability for this vm's previews only)."""

    async def go(_: RemoteClient) -> Any:
        return await _listing(url, token, key)

    listing = run_client(url, token, go)
    if check_port and port not in {int(e["port"]) for e in listing["ports"]}:
        console.print(
            f"warning: nothing listens on port {port} in vm {clean(key)}",
            style="yellow",
            markup=False,
            highlight=False,
        )
    print(preview_url(url, listing["preview_template"], port, path))
