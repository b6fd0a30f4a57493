"""``agentvm cluster``: the hosts sharing the server's database (``GET /cluster``).

Light on purpose (typer and the standard library, like ``agentvm ps``). Host ids,
URLs and load come from the database other hosts write: printed as plain text."""

from __future__ import annotations

import time
from typing import Any

import typer

from .cli_common import (
    DEFAULT,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    fail,
    http_json,
    plain_table,
    print_json,
    write_bytes,
)

HELP = "Hosts sharing the database: their leases, load and health."

cluster_app = typer.Typer(add_completion=False, help=HELP, invoke_without_command=True)


def _load(load: Any) -> str:
    if not isinstance(load, dict):
        return "-"
    parts = [f"{k}={load[k]}" for k in ("actors", "sandboxes", "rss_mib") if k in load]
    return " ".join(parts) or "-"


def _age(host: dict[str, Any]) -> str:
    age = host.get("heartbeat_age_s")
    if isinstance(age, int | float):
        return f"{age:.1f}s"
    return "-"


@cluster_app.callback()
def cluster(url: UrlOpt = DEFAULT, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Hosts sharing the database: their leases, load and health."""
    view = http_json(url, token, "GET", "/cluster")
    hosts = view.get("hosts") if isinstance(view, dict) else None
    if not isinstance(hosts, list):
        raise fail(f"{url} answered GET /cluster without a list of hosts")
    if as_json:
        print_json(view)
        return
    me = view.get("host_id", "")
    rows = []
    for h in hosts:
        if not isinstance(h, dict):
            continue
        health = "alive" if h.get("alive") else ("stopped" if h.get("stopped") else "dead")
        rows.append(
            (
                ("* " if h.get("host_id") == me else "  ") + str(h.get("host_id", "")),
                health,
                str(h.get("leases", 0)),
                _load(h.get("load")),
                _age(h),
                str(h.get("url") or "-"),
                str(h.get("engine_id") or "-")[:12],
            )
        )
    mode = view.get("mode", "?")
    ttl = view.get("lease_ttl")
    title = f"cluster ({mode}" + (f", lease ttl {ttl:g}s" if isinstance(ttl, int | float) else "")
    title += f"; answered by {me} at {time.strftime('%H:%M:%S')})"
    columns = ("host", "health", "leases", "load", "heartbeat", "url", "engine")
    write_bytes(plain_table(columns, rows, title).encode())
