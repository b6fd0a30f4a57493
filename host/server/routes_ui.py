"""The web console at ``/ui``: static files from ``host/server/ui/`` (docs/console.md).

Only two folders are served: ``src/`` (our hand-written ES modules) and ``vendor/``
(third-party builds copied there by ``scripts/build-ui``). The files carry no
secret, so ``/ui`` needs no token (the pages ask for it and send it as a bearer
header on every API call); every answer has a strict CSP (no inline script but the
import map, allowed by its hash), ``nosniff`` and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

UI_ROOT = Path(__file__).resolve().parent / "ui"
SERVED_DIRS = ("src", "vendor")
# The vendored files the index page cannot do without; the rest are page-specific.
REQUIRED_VENDOR = ("preact.mjs", "hooks.mjs", "htm.mjs", "agentvm-client.mjs")

router = APIRouter(include_in_schema=False)

_STYLE_LINK = b'<link rel="stylesheet" href="src/style.css">'
_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.DOTALL)
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".map": "application/json",
}


def csp(script_hashes: tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy of every ``/ui`` answer."""
    extra = "".join(f" 'sha256-{h}'" for h in script_hashes)
    return (
        f"default-src 'self'; script-src 'self'{extra}; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'; object-src 'none'"
    )


def _headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Assets change with the checkout: revalidate (ETag/Last-Modified) every time.
        "Cache-Control": "no-cache",
    }


def missing_assets(root: Path | None = None) -> list[str]:
    root = root or UI_ROOT
    return [name for name in REQUIRED_VENDOR if not (root / "vendor" / name).is_file()]


NOT_BUILT = """<!doctype html><html><head><meta charset="utf-8"><title>agentvm console</title>
</head><body><h1>console assets are not built: run ./scripts/setup</h1>
<p>missing: {missing}</p><p>(or ./scripts/build-ui, which fetches them from the npm registry
into host/server/ui/vendor/)</p></body></html>"""


@router.get("/ui")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/")
async def ui_index() -> Response:
    missing = missing_assets(_root())
    if missing:
        return HTMLResponse(
            NOT_BUILT.format(missing=", ".join(f"vendor/{m}" for m in missing)),
            status_code=503,
            headers=_headers(csp()),
        )
    page = (_root() / "index.html").read_bytes()
    style = _cache.get(_root() / "src" / "style.css")
    if style is not None and b"</style" not in style[1].lower():
        # Inlined (CSP: style-src 'unsafe-inline'): a render-blocking stylesheet
        # request no longer stands between the page and its first paint.
        page = page.replace(_STYLE_LINK, b"<style>" + style[1] + b"</style>", 1)
    hashes = tuple(
        base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
        for m in _IMPORT_MAP.finditer(page)
    )
    return Response(page, media_type="text/html; charset=utf-8", headers=_headers(csp(hashes)))


@router.get("/ui/{path:path}")
async def ui_file(request: Request, path: str) -> Response:
    target = _resolve(path)
    if target is None:
        return Response(
            b"not found", status_code=404, media_type="text/plain", headers=_headers(csp())
        )
    media = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "text/plain"
    cached = _cache.get(target)
    if cached is None:
        return FileResponse(target, media_type=media, headers=_headers(csp()))
    etag, body = cached
    headers = {**_headers(csp()), "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)


class _FileCache:
    """The served files' bytes in memory, re-read when their size or mtime changes:
    the first paint must not wait on a thread pool for each of a dozen small files.
    Only files up to ``MAX_CACHED`` bytes; the folders' content bounds the total."""

    MAX_CACHED = 4 * 1024 * 1024

    def __init__(self) -> None:
        self.entries: dict[Path, tuple[tuple[int, int], str, bytes]] = {}

    def get(self, target: Path) -> tuple[str, bytes] | None:
        st = target.stat()
        if st.st_size > self.MAX_CACHED:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        entry = self.entries.get(target)
        if entry is None or entry[0] != stamp:
            body = target.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            entry = (stamp, etag, body)
            self.entries[target] = entry
        return entry[1], entry[2]


_cache = _FileCache()


def _root() -> Path:
    return UI_ROOT  # read at call time: tests point it elsewhere


def _resolve(path: str, root: Path | None = None) -> Path | None:
    """The file ``path`` names inside ``src/`` or ``vendor/``, or ``None``: no
    ``..``, no hidden files, no symlink out of the folder."""
    root = root or _root()
    parts = path.split("/")
    if len(parts) < 2 or parts[0] not in SERVED_DIRS:
        return None
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    base = (root / parts[0]).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target
