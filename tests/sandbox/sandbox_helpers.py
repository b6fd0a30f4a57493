"""Helpers shared by the sandbox tests (import as ``sandbox_helpers``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import docker

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], *, deadline: float = 20.0, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def kill_container(client: docker.DockerClient, ident: str, **kwargs: Any) -> None:
    client.containers.get(ident).kill(**kwargs)
