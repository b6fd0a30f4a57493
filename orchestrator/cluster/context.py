"""Where the current call came from, for placement: an HTTP request from a client,
an HTTP request another host forwarded, or actor code (in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

HTTP = "http"
FORWARDED = "forwarded"

# Set by the HTTP server's cluster middleware for the request's task; reset by the
# in-process transport, so actor code running inside a request does not place.
_origin: ContextVar[str | None] = ContextVar("agentvm_cluster_origin", default=None)


def origin() -> str | None:
    return _origin.get()


def set_origin(value: str | None) -> object:
    return _origin.set(value)


def reset_origin(token: object) -> None:
    _origin.reset(token)  # type: ignore[arg-type]


def http_request() -> bool:
    """True inside an HTTP request a client sent to this host (placement applies)."""
    return _origin.get() == HTTP


def forwarded_request() -> bool:
    """True inside an HTTP request another host forwarded here (serve it here)."""
    return _origin.get() == FORWARDED


@contextmanager
def in_process() -> Iterator[None]:
    """Calls made by actor code: created actors stay on this host."""
    token = _origin.set(None)
    try:
        yield
    finally:
        _origin.reset(token)
