"""Shared pieces of the CLI's client commands: options, the client, output, errors.

Start-up time matters here (``agentvm --help`` and ``agentvm ps`` answer in well under
200 ms): this module imports only typer and the standard library at load time. rich,
httpx and the ``orchestrator`` package (which loads the engine) are imported by the
functions that need them; ``http_json`` is a standard-library client for the commands
that make one or two plain JSON requests (``ps``, ``vm ls``, ``vm exec``).
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit

import typer

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

    from orchestrator import RemoteClient

T = TypeVar("T")

# orchestrator.remote.DEFAULT_URL (not imported: that loads httpx; a test keeps them equal).
DEFAULT = "http://127.0.0.1:6420"

UrlOpt = Annotated[
    str, typer.Option("--url", envvar="AGENTVM_URL", help="server URL", show_default=True)
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="AGENTVM_TOKEN", help="bearer token")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]
KeyArg = Annotated[str, typer.Argument(help="actor key (parts joined by ',', each %-encoded)")]


class _LazyConsole:
    """A rich ``Console`` made on first use (importing rich costs ~50 ms)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


if TYPE_CHECKING:
    console: Console
    out: Console
else:
    console = _LazyConsole(stderr=True)
    out = _LazyConsole(stderr=False)


def decode_key(text: str) -> tuple[str, ...]:
    """``orchestrator.keys.decode_key_path`` without loading the orchestrator package."""
    if text == "":
        raise typer.BadParameter("an actor key in a path must not be empty")
    return tuple(unquote(part) for part in text.split(","))


def encode_key(key: Sequence[str]) -> str:
    """``orchestrator.keys.encode_key_path`` (a test keeps the two equal)."""
    return ",".join(quote(part, safe="") for part in key)


def parse_key(text: str) -> tuple[str, ...]:
    return decode_key(text)


def parse_value(text: str) -> Any:
    """A CLI argument: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def print_json(value: Any) -> None:
    """Indented JSON on stdout (``bytes`` as ``{"$bytes": base64}``, as on the wire)."""
    try:
        text = json.dumps(value, ensure_ascii=False, indent=2)
    except TypeError:  # bytes, models, tuples of them: the wire form
        from orchestrator.wire import to_wire

        text = json.dumps(to_wire(value), ensure_ascii=False, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def from_wire(value: Any) -> Any:
    """``{"$bytes": base64}`` objects as ``bytes`` (``orchestrator.wire.from_wire``)."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            return base64.b64decode(value["$bytes"])
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


# C0 controls but \t and \n, DEL, C1 controls (\x9b is a CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: Any, limit: int | None = None) -> str:
    """Server text made safe for a terminal: control characters shown escaped."""
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, default=str)
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"... ({len(s) - limit} more characters)"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def fail(message: str, code: int = 1) -> typer.Exit:
    # The message may quote the server (and sandbox code): plain text, never markup.
    sys.stderr.write(f"error: {clean(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Rows as aligned text columns (cells ``clean``ed: they may come from sandbox code)."""
    cells = [[clean(c if isinstance(c, str) else str(c)) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(columns)]
    lines = [title] if title else []
    for r in [list(columns), *cells]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


@contextmanager
def spinner(text: str) -> Iterator[None]:
    """A spinner on stderr while something runs (only drawn on a terminal)."""
    if sys.stderr.isatty() and console.is_terminal:
        with console.status(text):
            yield
    else:
        yield


def _reach_error(url: str) -> typer.Exit:
    return fail(f"cannot reach agentvm at {url} (is `agentvm serve` running?)")


def run_client(url: str, token: str | None, fn: Callable[[RemoteClient], Awaitable[T]]) -> T:
    """Run ``fn(client)`` on a fresh HTTP client; typed errors become CLI errors."""
    import asyncio

    import httpx

    from orchestrator import AgentVMError, create_client

    async def main() -> T:
        async with create_client(url, token) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except AgentVMError as exc:
        raise fail(f"{exc.group}/{exc.code}: {exc.message}") from None
    except httpx.ConnectError:
        raise _reach_error(url) from None
    except httpx.HTTPError as exc:
        raise fail(f"HTTP error talking to {url}: {exc}") from None


def http_request(
    url: str,
    token: str | None,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, bytes]:
    """One request with the standard library (http.client): (status, body bytes).

    Connecting gives up after 10 s; the answer is waited for without a deadline (an
    ``exec`` runs as long as its own timeout says). Transport errors are CLI errors."""
    import http.client
    import socket

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"--url must be an http(s) URL, not {url!r}", 2)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_cls(parts.hostname, parts.port, timeout=10.0)
    headers = {"Accept": "application/json", "Host": parts.netloc}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    target = parts.path.rstrip("/") + path + (f"?{urlencode(params)}" if params else "")
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(None)
        conn.request(method, target, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (ConnectionRefusedError, socket.gaierror, TimeoutError):
        raise _reach_error(url) from None
    except (OSError, http.client.HTTPException) as exc:
        raise fail(f"HTTP error talking to {url}: {exc}") from None
    finally:
        conn.close()


def error_message(status: int, raw: bytes) -> str:
    """The server's typed error (``{"error": {group, code, message}}``) as one line."""
    try:
        detail = json.loads(raw)["error"]
        if not isinstance(detail, dict):
            raise TypeError
        return f"{detail.get('group')}/{detail.get('code')}: {detail.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"http/{status}: HTTP {status}: {raw[:500].decode(errors='replace')}"


def http_json(
    url: str,
    token: str | None,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: Any = None,
) -> Any:
    """One JSON request (``http_request``); an error answer exits with its message."""
    status, raw = http_request(url, token, method, path, params=params, body=body)
    if status >= 400:
        raise fail(error_message(status, raw))
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise fail(f"{url} answered {method} {path} with something that is not JSON") from None


def raw_client(url: str, token: str | None) -> httpx.AsyncClient:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=None)


def check(resp: httpx.Response) -> httpx.Response:
    """Raise the server's typed error for an error response."""
    from orchestrator.remote import raise_for_error

    raise_for_error(resp)
    return resp


def write_bytes(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
