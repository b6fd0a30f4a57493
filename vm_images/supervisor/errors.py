"""Errors a call returns to the host: an errno-style code, a message, maybe a path."""

from __future__ import annotations

import errno
from typing import Any

from .protocol import error_body


class OpError(Exception):
    def __init__(self, code: str, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.path)


def from_os_error(exc: OSError, path: str | None = None) -> OpError:
    """Map an OSError to the wire error, naming the path it concerns."""
    code = errno.errorcode.get(exc.errno or 0, "EIO")
    where = path or (exc.filename if isinstance(exc.filename, str) else None)
    reason = exc.strerror or str(exc)
    message = f"{reason}: {where}" if where else reason
    return OpError(code, message, where)
