"""Which requests are preview traffic (``/vms/{key}/ports/{port}/...``), preview
links a browser can open, and the browser policy for them (used by the guard and
the auth and body middleware; no FastAPI here).

A preview is hostile content served from the server's own origin. Its responses
carry ``Content-Security-Policy: sandbox ...`` (routes_ports.py), so the browser
runs the page in an opaque origin: it cannot read the console's storage (the token)
and its requests to the API carry ``Origin: null`` / ``Sec-Fetch-Site: cross-site``,
which the guard refuses.

A browser cannot send ``Authorization`` when it opens a link, so a preview link
carries a *capability* in its port segment: ``/vms/{key}/ports/8000.<cap>/``, where
``cap`` is an HMAC of the vm key under a secret derived from ``AGENTVM_TOKEN`` (a
random per-process secret without a token). Relative URLs in the page keep it, so
the page's own sub-requests carry it too. It opens that vm's previews and nothing
else: the API routes never accept it. The guard accepts cross-site requests (the
page's own, from its opaque origin) to a capability path only: whoever was given
the link has it, and a page of another vm or site cannot make it up. A preview
opened without a link (``/vms/{key}/ports/8000/`` with the bearer token) gets its
top-level page, but its cross-site sub-requests are refused like any other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import Any

from starlette.types import Scope

from orchestrator.errors import AgentVMError

from .paths import parse_key

# /vms/<key>/ports/<port>[.<cap>] and everything under it (raw path: key %-encoded).
PREVIEW_PATH = re.compile(r"^/vms/[^/]+/ports/[^/]+(?:/|$)")
_CAP_PATH = re.compile(r"^/vms/([^/]+)/ports/(\d{1,5})\.([A-Za-z0-9_-]{16,64})(?:/|$)")

PREVIEW_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


def is_preview_path(path: str) -> bool:
    return PREVIEW_PATH.match(path) is not None


def preview_secret(app: Any) -> bytes:
    """The key preview capabilities are signed with (kept on the app's state)."""
    state = app.state
    secret: bytes | None = getattr(state, "preview_secret", None)
    if secret is None:
        settings = getattr(state, "settings", None)
        token = getattr(settings, "token", None)
        secret = (
            hashlib.sha256(b"agentvm-preview\0" + token.encode()).digest()
            if token
            else os.urandom(32)
        )
        state.preview_secret = secret
    return secret


def capability(secret: bytes, raw_key: str) -> str:
    """The capability of vm ``raw_key`` (its path segment; signed in decoded form)."""
    parts = parse_key(raw_key)
    mac = hmac.new(secret, b"preview\0" + "\0".join(parts).encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


def capability_ok(scope: Scope) -> bool:
    """True when the request's path carries the right capability for its vm."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    match = _CAP_PATH.match(path)
    app = scope.get("app")
    if match is None or app is None:
        return False
    try:
        expected = capability(preview_secret(app), match.group(1))
    except AgentVMError:
        return False
    return hmac.compare_digest(expected, match.group(3))
