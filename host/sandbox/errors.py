"""Typed errors of the sandbox layer.

Every error is an :class:`orchestrator.errors.AgentVMError` of group ``sandbox``
with a stable snake_case ``code`` and an ``http_status``, so the HTTP layer maps
it like any engine error. The supervisor's errno name (``ENOENT``, ``EEXIST``, …)
is kept in ``errno_name`` and in ``metadata["errno"]``; ``path`` names the path
concerned when there is one.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import AgentVMError

# HTTP status for a failed operation inside the sandbox, by errno name.
_ERRNO_STATUS = {
    "ENOENT": 404,
    "ESRCH": 404,
    "EEXIST": 409,
    "ENOTEMPTY": 409,
    "EISDIR": 409,
    "ENOTDIR": 409,
    "EACCES": 403,
    "EPERM": 403,
    "EROFS": 403,
    "EINVAL": 400,
    "ETIMEDOUT": 504,
    "ECANCELED": 499,
    "EAGAIN": 429,
    "EFBIG": 413,
    # The vm's own disk quota is full: its problem, not the server's.
    "ENOSPC": 507,
    "EDQUOT": 507,
}


class SandboxError(AgentVMError):
    """Base class; ``errno_name`` is an errno-style name when the supervisor reported it."""

    group = "sandbox"
    code = "error"
    http_status = 500
    errno_name = "ESANDBOX"

    def __init__(
        self, message: str, *, code: str | None = None, path: str | None = None, **metadata: Any
    ) -> None:
        # ``code`` is the errno-style name (the constructor predates the AgentVMError base).
        if code is not None:
            self.errno_name = code
        if self.errno_name != "ESANDBOX":
            metadata.setdefault("errno", self.errno_name)
        if path is not None:
            metadata.setdefault("path", path)
        super().__init__(message, **metadata)
        self.path = path


class SandboxNotFound(SandboxError):
    """No container with that name or id exists (any more)."""

    code = "sandbox_not_found"
    http_status = 404
    errno_name = "ENOSANDBOX"


class SandboxLost(SandboxError):
    """The sandbox went away during a call (container died, or its supervisor link broke).

    The call's outcome is unknown; the next call may bring the sandbox back.
    """

    code = "lost"
    http_status = 503
    errno_name = "ELOST"


class SandboxUnresponsive(SandboxLost):
    """The sandbox stopped answering (frozen, paused, or its supervisor hung): the host
    gave up on the link after a bounded wait. The next call restarts the container."""

    code = "unresponsive"
    http_status = 503
    errno_name = "EUNRESPONSIVE"


class DockerUnavailable(SandboxError):
    """The Docker engine does not answer; ``address`` names the engine endpoint."""

    code = "docker_unavailable"
    http_status = 503
    errno_name = "ENODOCKER"

    def __init__(self, address: str, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"Docker engine at {address} is not available{suffix} "
            "(start it, e.g. with scripts/ensure-docker)",
            address=address,
        )
        self.address = address


class SupervisorError(SandboxError):
    """An operation failed inside the sandbox (errno-style ``errno_name``, maybe ``path``)."""

    code = "operation_failed"

    def __init__(
        self, message: str, *, code: str | None = None, path: str | None = None, **metadata: Any
    ) -> None:
        super().__init__(message, code=code, path=path, **metadata)
        # Instance attribute: the status follows the errno (EEXIST is a conflict, ...).
        self.http_status = _ERRNO_STATUS.get(self.errno_name, type(self).http_status)


class FileNotFoundInSandbox(SupervisorError, FileNotFoundError):
    """A path does not exist in the sandbox; ``path`` names it."""

    code = "file_not_found"
    http_status = 404
    errno_name = "ENOENT"


class ProcessNotFound(SupervisorError):
    """No process with that pid is known to the supervisor."""

    code = "process_not_found"
    http_status = 404
    errno_name = "ESRCH"


class SandboxTimeout(SupervisorError, TimeoutError):
    """A wait inside the sandbox ran out of time."""

    code = "timeout"
    http_status = 504
    errno_name = "ETIMEDOUT"


class ResourceLimit(SupervisorError):
    """The sandbox hit one of its limits (e.g. no process can start: pids limit)."""

    code = "resource_limit"
    http_status = 429
    errno_name = "EAGAIN"


class FileTooLarge(SupervisorError):
    """A file is larger than the caller's (or the host's) cap for reading it whole."""

    code = "file_too_large"
    http_status = 413
    errno_name = "EFBIG"


class VmLost(AgentVMError):
    """The vm's container and home are on a Docker engine this host does not drive (its
    host died with its machine) or gone, and no workspace checkpoint could re-create
    them: the vm is lost (never silently brought back with an empty home)."""

    group = "vm"
    code = "lost"
    http_status = 410


def from_wire(error: dict[str, object]) -> SupervisorError:
    """Build the typed exception for a failed RESULT frame."""
    code = str(error.get("code") or "EIO")
    message = str(error.get("message") or code)
    raw_path = error.get("path")
    path = raw_path if isinstance(raw_path, str) else None
    cls: type[SupervisorError] = {
        "ENOENT": FileNotFoundInSandbox,
        "ESRCH": ProcessNotFound,
        "ETIMEDOUT": SandboxTimeout,
        "EAGAIN": ResourceLimit,
        "EFBIG": FileTooLarge,
    }.get(code, SupervisorError)
    return cls(message, code=code, path=path)
