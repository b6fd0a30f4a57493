"""Helpers shared by the sandbox tests (import as ``sandbox_helpers``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import docker

from tests.support import eventually as _eventually

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, deadline: float = 20.0, what: str = "condition"
) -> T:
    """The shared poll (tests.support.eventually) with this suite's defaults."""
    return await _eventually(check, timeout=deadline, interval=0.05, what=what)


def kill_container(client: docker.DockerClient, ident: str, **kwargs: Any) -> None:
    client.containers.get(ident).kill(**kwargs)
