"""Which requests are preview traffic (``/vms/{key}/ports/{port}/...``), and the
browser policy for them (used by the guard and body middleware; no FastAPI here).

A preview is hostile content served from the server's own origin. Its responses
carry ``Content-Security-Policy: sandbox ...`` (routes_ports.py), so the browser
runs the page in an opaque origin: it cannot read the console's storage (the token)
and its requests to the API carry ``Origin: null`` / ``Sec-Fetch-Site: cross-site``,
which the guard refuses. The page's requests for its *own* files are cross-site
too, so for preview paths the guard also accepts a browser request whose
``Referer`` is the server's own origin: a page on another site cannot send that.
"""

from __future__ import annotations

import re

# /vms/<key>/ports/<port> and everything under it (raw path: the key is %-encoded).
PREVIEW_PATH = re.compile(r"^/vms/[^/]+/ports/[^/]+(?:/|$)")

PREVIEW_CSP = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


def is_preview_path(path: str) -> bool:
    return PREVIEW_PATH.match(path) is not None


def referer(headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> str | None:
    for key, value in headers:
        if key == b"referer":
            return bytes(value).decode("latin-1")
    return None
