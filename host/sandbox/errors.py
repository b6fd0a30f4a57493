"""Typed errors of the sandbox layer."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class; ``code`` is an errno-style name when the supervisor reported it."""

    code = "ESANDBOX"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.path = path


class SandboxNotFound(SandboxError):
    """No container with that name or id exists (any more)."""

    code = "ENOSANDBOX"


class SandboxLost(SandboxError):
    """The sandbox went away during a call (container died, or its supervisor link broke).

    The call's outcome is unknown; the next call may bring the sandbox back.
    """

    code = "ELOST"


class DockerUnavailable(SandboxError):
    """The Docker engine does not answer; ``address`` names the engine endpoint."""

    code = "ENODOCKER"

    def __init__(self, address: str, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"Docker engine at {address} is not available{suffix} "
            "(start it, e.g. with scripts/ensure-docker)"
        )
        self.address = address


class SupervisorError(SandboxError):
    """An operation failed inside the sandbox (errno-style ``code``, maybe ``path``)."""


class FileNotFoundInSandbox(SupervisorError, FileNotFoundError):
    """A path does not exist in the sandbox; ``path`` names it."""

    code = "ENOENT"


class ProcessNotFound(SupervisorError):
    """No process with that pid is known to the supervisor."""

    code = "ESRCH"


class SandboxTimeout(SupervisorError, TimeoutError):
    """A wait inside the sandbox ran out of time."""

    code = "ETIMEDOUT"


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
    }.get(code, SupervisorError)
    return cls(message, code=code, path=path)
