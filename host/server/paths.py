"""Actor keys and names in URL paths.

A key in a path is its parts joined by ``,``, each part percent-encoded (a comma
inside a part is ``%2C``, a slash ``%2F``). ASGI servers hand the application an
already-decoded ``path``, which would turn ``%2C`` into a separator and ``%2F`` into
a new path segment, so :class:`RawPathMiddleware` routes ``/actors/...`` and
``/vms/...`` on the raw path instead and the routes decode their parameters here.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.errors import InvalidRequest
from orchestrator.keys import ActorKey

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_RAW_PREFIXES = ("/actors/", "/vms/")


def decode_part(raw: str, what: str) -> str:
    """Percent-decode one raw path segment (latin-1 text of the raw bytes) as UTF-8."""
    if _BAD_ESCAPE.search(raw):
        raise InvalidRequest(f"malformed {what} {raw!r}: a '%' must start an escape like %2C")
    try:
        text = unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed {what} {raw!r}: not UTF-8 ({exc.reason})") from exc
    return text


def parse_key(raw: str) -> ActorKey:
    """``a%2Cb,c`` → ``("a,b", "c")``; :class:`InvalidRequest` (field ``key``) if malformed."""
    if raw == "":
        raise InvalidRequest("malformed key: an actor key in a path must not be empty", field="key")
    try:
        return tuple(decode_part(part, "key") for part in raw.split(","))
    except InvalidRequest as exc:
        exc.metadata["field"] = "key"
        raise


def parse_name(raw: str, field: str) -> str:
    try:
        return decode_part(raw, field)
    except InvalidRequest as exc:
        exc.metadata["field"] = field
        raise


class RawPathMiddleware:
    """Route ``/actors/*`` and ``/vms/*`` on the undecoded path (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw = scope.get("raw_path")
            if raw and scope["path"].startswith(_RAW_PREFIXES):
                # In place, so outer middleware sees the route the router records.
                scope["path"] = raw.decode("latin-1")
        await self.app(scope, receive, send)
