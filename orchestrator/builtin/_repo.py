"""Which repositories a request may name: a URL (cloned inside the vm), an uploaded
blob (``blob:sha256:<hex>``, sent by the client), or a host path inside one of the
allowlisted roots (``AGENTVM_REPO_ROOTS``). A request comes from a caller — maybe a
hostile one — so a host path is never opened just because it was asked for."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from pydantic import BaseModel, field_validator

from ..errors import InvalidRequest

BLOB_PREFIX = "blob:"
_BLOB_REF = re.compile(r"^blob:sha256:[0-9a-f]{64}$")
# Never a repository, whatever the roots say: kernel and device files of the host.
_FORBIDDEN = ("/proc", "/sys", "/dev")

HOW_TO_ALLOW = (
    "set AGENTVM_REPO_ROOTS=/path/to/projects on the server, or send the repository "
    "from the client: the Python client and `agentvm send` upload a local path for you"
)


def is_remote(repo: str) -> bool:
    return repo.startswith(("http://", "https://", "git://", "ssh://", "git@"))


def is_blob(repo: str) -> bool:
    return repo.startswith(BLOB_PREFIX)


def blob_id_of(repo: str) -> str:
    """``sha256:<hex>`` of a ``blob:sha256:<hex>`` reference."""
    return repo.removeprefix(BLOB_PREFIX)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _forbidden(path: str) -> bool:
    return any(_inside(path, f) for f in _FORBIDDEN)


@dataclass(frozen=True)
class RepoPolicy:
    """Host directories local repositories may come from (none by default)."""

    roots: tuple[str, ...] | list[str] = field(default=())

    def resolve(self, repo: str, field: str = "repo") -> str | None:
        """The real path of an allowed local ``repo`` (None for a URL or a blob), or
        :class:`InvalidRequest` naming ``field`` saying how to allow it."""
        if is_remote(repo):
            return None
        if is_blob(repo):
            if not _BLOB_REF.match(repo):
                raise InvalidRequest(
                    f"{field}: a blob reference is 'blob:sha256:<64 lowercase hex digits>'",
                    field=field,
                )
            return None
        if "\x00" in repo:
            raise InvalidRequest(f"{field}: a path must not contain NUL", field=field)
        if not self.roots:
            raise InvalidRequest(
                f"{field}: local repository paths are not allowed on this server "
                f"(AGENTVM_REPO_ROOTS is empty); {HOW_TO_ALLOW}",
                field=field,
            )
        if not os.path.isabs(repo):
            raise InvalidRequest(
                f"{field}: a local repository path must be absolute on the server; {HOW_TO_ALLOW}",
                field=field,
            )
        # realpath resolves every symlink and '..': a link inside a root pointing out of
        # it is judged by where it points. Kernel paths are refused before any lookup.
        try:
            lexical = os.path.normpath(repo)
            real = "/proc" if _forbidden(lexical) else os.path.realpath(repo)
        except (OSError, ValueError):
            real = "/proc"  # unresolvable (e.g. a /proc link we may not read): refused
        roots = [os.path.realpath(r) for r in self.roots if os.path.isabs(r)]
        if _forbidden(real) or not any(_inside(real, r) for r in roots):
            raise InvalidRequest(
                f"{field}: {repo!r} is not inside an allowed repository root; {HOW_TO_ALLOW}",
                field=field,
            )
        if not os.path.exists(real):
            raise InvalidRequest(f"{field}: {repo!r} does not exist on the server", field=field)
        return real


class RepoRequest(BaseModel):
    """A request body with an optional ``repo``, checked against :attr:`repo_policy`
    when validated — so a send naming a forbidden path is refused at send time."""

    repo_policy: ClassVar[RepoPolicy] = RepoPolicy()

    @field_validator("repo", check_fields=False)
    @classmethod
    def _repo_allowed(cls, value: str | None) -> str | None:
        if value:
            try:
                cls.repo_policy.resolve(value)
            except InvalidRequest as exc:
                raise ValueError(str(exc).removeprefix("repo: ")) from None
        return value

    @classmethod
    def with_policy(cls: type[R], policy: RepoPolicy) -> type[R]:
        """This model checking repositories against ``policy``."""
        return type(cls.__name__, (cls,), {"repo_policy": policy, "__module__": cls.__module__})


R = TypeVar("R", bound=RepoRequest)


def check_repo(repo: str, policy: RepoPolicy | None, field: str = "body.repo") -> str | None:
    """:meth:`RepoPolicy.resolve` with the default (no roots) when ``policy`` is None."""
    return (policy or RepoPolicy()).resolve(repo, field)


__all__ = [
    "BLOB_PREFIX",
    "HOW_TO_ALLOW",
    "RepoPolicy",
    "RepoRequest",
    "blob_id_of",
    "check_repo",
    "is_blob",
    "is_remote",
]
