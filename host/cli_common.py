"""Shared pieces of the CLI's client commands: options, the client, output, errors."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

from orchestrator import AgentVMError, RemoteClient, create_client
from orchestrator.keys import ActorKey, decode_key_path
from orchestrator.remote import DEFAULT_URL, raise_for_error
from orchestrator.wire import to_wire

console = Console(stderr=True)
out = Console()

T = TypeVar("T")

UrlOpt = Annotated[
    str, typer.Option("--url", envvar="AGENTVM_URL", help="server URL", show_default=True)
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="AGENTVM_TOKEN", help="bearer token")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]
KeyArg = Annotated[str, typer.Argument(help="actor key (parts joined by ',', each %-encoded)")]

DEFAULT = DEFAULT_URL


def parse_key(text: str) -> ActorKey:
    try:
        return decode_key_path(text)
    except AgentVMError as exc:
        raise typer.BadParameter(exc.message) from exc


def parse_value(text: str) -> Any:
    """A CLI argument: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def print_json(value: Any) -> None:
    out.print_json(json.dumps(to_wire(value), ensure_ascii=False), highlight=False)


# C0 controls but \t and \n, DEL, C1 controls (\x9b is a CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: Any, limit: int | None = None) -> str:
    """Server text made safe for a terminal: control characters shown escaped."""
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"... ({len(s) - limit} more characters)"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def fail(message: str, code: int = 1) -> typer.Exit:
    # The message may quote the server (and sandbox code): never read as markup.
    console.print(Text("error: ", style="red") + Text(clean(message)), highlight=False)
    return typer.Exit(code)


@contextmanager
def spinner(text: str) -> Iterator[None]:
    """A spinner on stderr while something runs (only drawn on a terminal)."""
    if console.is_terminal:
        with console.status(text):
            yield
    else:
        yield


def run_client(url: str, token: str | None, fn: Callable[[RemoteClient], Awaitable[T]]) -> T:
    """Run ``fn(client)`` on a fresh HTTP client; typed errors become CLI errors."""

    async def main() -> T:
        async with create_client(url, token) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except AgentVMError as exc:
        raise fail(f"{exc.group}/{exc.code}: {exc.message}") from None
    except httpx.ConnectError:
        raise fail(f"cannot reach agentvm at {url} (is `agentvm serve` running?)") from None
    except httpx.HTTPError as exc:
        raise fail(f"HTTP error talking to {url}: {exc}") from None


def raw_client(url: str, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=None)


def check(resp: httpx.Response) -> httpx.Response:
    """Raise the server's typed error for an error response."""
    raise_for_error(resp)
    return resp


def write_bytes(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
