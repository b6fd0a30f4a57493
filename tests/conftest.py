from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from orchestrator import Engine, Registry

# Shared fixtures from the test support code (e.g. `fake_anthropic`).
pytest_plugins = ["tests.support.fake_anthropic", "tests.support.postgres"]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "agentvm.db")


@pytest.fixture
def make_engine(db_path: str) -> Callable[..., Any]:
    """``async with make_engine(registry, **config) as engine:`` on a fresh SQLite file
    (the same file each time within one test, so a second engine is a restart)."""

    @asynccontextmanager
    async def factory(registry: Registry, **overrides: Any) -> AsyncIterator[Engine]:
        overrides.setdefault("db", db_path)
        engine = Engine(registry, **overrides)
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop()

    return factory
