"""Requests from web pages: the Host, Origin/Sec-Fetch-Site and JSON body checks.

A page in the user's browser can reach ``127.0.0.1:6420`` too. Two attacks matter:

- *DNS rebinding*: a page on ``evil.example`` re-points its own name at 127.0.0.1
  and calls the API "same-origin". Its requests carry ``Host: evil.example``, so
  :class:`BrowserGuardMiddleware` accepts only loopback names and addresses, the
  bind address and ``AGENTVM_ALLOWED_HOSTS``.
- *Cross-site requests*: a page may send "simple" requests (a ``text/plain`` POST,
  an ``<img>`` GET, a WebSocket) to any address. Browsers label them with
  ``Origin`` and ``Sec-Fetch-Site``; anything not same-origin (or from
  ``AGENTVM_ALLOWED_ORIGINS``) is refused, whatever the method. Clients that are
  not browsers send neither header and pass.

:class:`JsonBodyMiddleware` then requires ``application/json`` on every body but
raw uploads (a browser cannot send JSON cross-site without a CORS preflight, which
we never answer) and refuses JSON nested deeper than ``AGENTVM_MAX_JSON_DEPTH``
before anything parses it recursively.
"""

from __future__ import annotations

import ipaddress
import re
from array import array
from itertools import accumulate
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .middleware import send_json
from .preview import capability_ok, is_preview_path

# Bodies that are raw bytes, not JSON: (method, path prefix).
RAW_BODY_ROUTES: tuple[tuple[str, str], ...] = (("PUT", "/vms/"), ("POST", "/blobs"))
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Sec-Fetch-Site values a browser sends for the server's own pages and for typed URLs.
_SAFE_FETCH_SITES = frozenset({b"same-origin", b"none"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.COM:8080"`` → ``("example.com", 8080)``; ``"[::1]"`` → ``("::1", None)``;
    ``None`` if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
    if not name:
        return None
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            return None
        return name, int(port_text)
    return name, None


def is_loopback_name(name: str) -> bool:
    """``localhost``, ``*.localhost`` (browsers resolve these to loopback themselves)
    and loopback addresses; never a name that DNS could point anywhere."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _origin_tuple(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


class BrowserGuardMiddleware:
    """403 for a ``Host`` that is not ours and for cross-origin browser requests."""

    def __init__(
        self, app: ASGIApp, *, bind: str, allowed_hosts: list[str], allowed_origins: list[str]
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}
        if bind not in _WILDCARD_BINDS:
            self.hosts.add(bind.lower().strip("[]"))
        self.origins = {o for o in (_origin_tuple(x) for x in allowed_origins) if o is not None}

    def _host_ok(self, name: str) -> bool:
        return self.any_host or is_loopback_name(name) or name in self.hosts

    def check(self, scope: Scope) -> tuple[str, str, dict[str, Any]] | None:
        """``(code, message, metadata)`` of the refusal, or ``None``."""
        raw_host = _header(scope, b"host")
        host = split_host(raw_host.decode("latin-1")) if raw_host is not None else None
        if host is None:
            shown = raw_host.decode("latin-1") if raw_host is not None else None
            return (
                "host_not_allowed",
                "a request needs a well-formed Host header",
                {"header": "host", "host": shown},
            )
        if not self._host_ok(host[0]):
            return (
                "host_not_allowed",
                f"Host {host[0]!r} is not a loopback name or address nor in "
                "AGENTVM_ALLOWED_HOSTS (a web page reaching this server through its own "
                "domain name, e.g. by DNS rebinding, is refused)",
                {"header": "host", "host": host[0]},
            )
        if is_preview_path(str(scope.get("path", ""))) and capability_ok(scope):
            return None  # a preview link: whoever has it may use it (preview.py)
        origin = _header(scope, b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            if self._origin_ok(scope, text, host):
                return None
            return (
                "cross_origin",
                f"requests from the web origin {text!r} are refused (add it to "
                "AGENTVM_ALLOWED_ORIGINS to allow it)",
                {"header": "origin", "origin": text},
            )
        site = _header(scope, b"sec-fetch-site")
        if site is not None and site.strip().lower() not in _SAFE_FETCH_SITES:
            text = site.decode("latin-1")
            return (
                "cross_origin",
                f"cross-site browser requests are refused (Sec-Fetch-Site: {text})",
                {"header": "sec-fetch-site", "sec_fetch_site": text},
            )
        return None  # not a browser (no Origin, no Sec-Fetch-Site), or a typed URL

    def _origin_ok(self, scope: Scope, origin: str, host: tuple[str, int | None]) -> bool:
        parsed = _origin_tuple(origin)
        if parsed is None:
            return False  # "null" (sandboxed frames, file://) and garbage
        if parsed in self.origins:
            return True
        raw_scheme = str(scope.get("scheme") or "http")
        scheme = {"ws": "http", "wss": "https"}.get(raw_scheme, raw_scheme)
        own = (scheme, host[0], host[1] or _DEFAULT_PORTS.get(scheme, 80))
        return parsed == own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, message, metadata = refusal
        body = error_body("request", code, message, **metadata)
        if scope["type"] == "http":
            await send_json(send, 403, body, [])
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send_json(send, 403, body, [], websocket=True)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": code})


# --- JSON bodies ------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_TABLE = bytearray(range(256))
_BRACKET_TABLE[ord("[")] = _BRACKET_TABLE[ord("{")] = 1
_BRACKET_TABLE[ord("]")] = _BRACKET_TABLE[ord("}")] = 0xFF  # -1 as a signed byte
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """The deepest array/object nesting in ``body`` (brackets inside strings ignored),
    without parsing it: C-speed passes only, so a 1 MiB body costs milliseconds."""
    brackets = _STRING.sub(b"", body).translate(_BRACKET_TABLE, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(0, max(accumulate(array("b", brackets))))


def _media_type(value: bytes) -> str:
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def is_json_media_type(value: bytes) -> bool:
    media = _media_type(value)
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonBodyMiddleware:
    """415 for a request body that is not ``application/json`` (raw uploads exempt);
    400 ``request/invalid_json`` for JSON nested deeper than ``max_depth``.

    Runs inside :class:`~host.server.middleware.BodyLimitMiddleware`, so the body it
    buffers is already bounded."""

    def __init__(self, app: ASGIApp, *, max_depth: int) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if any(method == m and path.startswith(p) for m, p in RAW_BODY_ROUTES) or (
            is_preview_path(path)  # any body: the sandbox's server reads it
        ):
            await self.app(scope, receive, send)
            return
        ctype = _header(scope, b"content-type")
        if ctype is not None and not is_json_media_type(ctype):
            await send_json(send, 415, _unsupported(ctype.decode("latin-1")), [])
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and ctype is None:
            await send_json(send, 415, _unsupported(None), [])
            return
        if body:
            depth = json_depth(body)
            if depth > self.max_depth:
                await send_json(send, 400, _too_deep(depth, self.max_depth), [])
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _unsupported(ctype: str | None) -> dict[str, Any]:
    got = f"Content-Type {ctype!r}" if ctype is not None else "no Content-Type"
    return error_body(
        "request",
        "unsupported_media_type",
        f"a request body must be JSON with 'Content-Type: application/json' (got {got})",
        header="content-type",
        content_type=ctype,
    )


def _too_deep(depth: int, limit: int) -> dict[str, Any]:
    return error_body(
        "request",
        "invalid_json",
        f"the JSON body is nested {depth} levels deep; at most {limit} are accepted",
        field="body",
        depth=depth,
        max_depth=limit,
    )
