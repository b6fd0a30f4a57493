"""What the gateway forwards: an allowlist of method + origin-form path, and the
upstream URL built from the configured upstream with only path and query replaced.

The request target comes from the sandbox, which is hostile. Before this module,
``upstream + target`` let a target like ``@127.0.0.1:8000/x`` or ``.evil.example/x``
move the request (and the host's key) to a host of the sandbox's choosing. Now a
target is accepted only when its path equals one of :data:`ALLOWED` exactly (no
percent-escapes, no dot segments, no authority) and its query uses a plain
character set; everything else is refused with a 4xx before any upstream
connection. docs/gateway.md lists the routes and the agents that need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

# (method, path): what the bundled coding agent, claude-agent-acp (Claude Code),
# pi and opencode call (see docs/gateway.md).
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models"),
    }
)
# GET /v1/models/<model id>: ids are plain names like "claude-sonnet-4-5-20250929".
_MODEL_PATH = re.compile(r"^/v1/models/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Queries the agents send look like "beta=true"; nothing that could end the URL
# component or smuggle another one ('#', '/', '@', '\\', '%', whitespace).
_QUERY = re.compile(r"^[A-Za-z0-9_.~=&,+-]{0,1024}$")
_PATHS = {path for _method, path in ALLOWED}


@dataclass(frozen=True)
class Refusal:
    """Why a request is not forwarded: an HTTP status and an Anthropic error type."""

    status: int
    kind: str
    message: str


@dataclass(frozen=True)
class Route:
    """An accepted request: its method, path and query (already validated)."""

    method: str
    path: str
    query: str


def _path_allowed(method: str, path: str) -> bool:
    return (method, path) in ALLOWED or (method == "GET" and bool(_MODEL_PATH.match(path)))


def route(method: bytes, target: bytes) -> Route | Refusal:
    """Validate a request line against the allowlist."""
    try:
        m = method.decode("ascii")
        t = target.decode("ascii")
    except UnicodeDecodeError:
        return Refusal(400, "invalid_request_error", "agentvm LLM gateway: non-ASCII request line")
    if not t.startswith("/") or t.startswith("//"):
        # Absolute-form (http://...), authority-form (CONNECT host:port), '@...', '.evil'.
        return Refusal(
            400,
            "invalid_request_error",
            f"agentvm LLM gateway: the request target must be a path (origin-form), got {t[:80]!r}",
        )
    path, sep, query = t.partition("?")
    if sep and not _QUERY.match(query):
        return Refusal(
            400, "invalid_request_error", "agentvm LLM gateway: unsupported characters in query"
        )
    if _path_allowed(m, path):
        return Route(method=m, path=path, query=query)
    allowed = ", ".join(f"{am} {ap}" for am, ap in sorted(ALLOWED)) + ", GET /v1/models/<id>"
    if path in _PATHS or _MODEL_PATH.match(path):
        return Refusal(
            405,
            "invalid_request_error",
            f"agentvm LLM gateway: method {m} not allowed on {path}; allowed: {allowed}",
        )
    return Refusal(
        404,
        "not_found_error",
        f"agentvm LLM gateway: {m} {path[:80]!r} is not forwarded; allowed: {allowed}",
    )


def upstream_url(upstream: httpx.URL, r: Route) -> httpx.URL:
    """The configured upstream with only path and query replaced (a base path such as
    ``https://proxy.example/anthropic`` is kept as a prefix)."""
    base = upstream.path.rstrip("/")
    url = upstream.copy_with(path=base + r.path, query=r.query.encode() if r.query else None)
    # Belt and braces: the key goes only to the configured origin.
    if (url.scheme, url.host, url.port) != (upstream.scheme, upstream.host, upstream.port):
        raise ValueError(f"built URL {url} left the upstream origin {upstream}")
    return url
