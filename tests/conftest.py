from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Engine, Registry

# Shared fixtures from the test support code (e.g. `fake_anthropic`).
pytest_plugins = ["tests.support.fake_anthropic", "tests.support.postgres"]


# The engine tests run against both stores (PostgreSQL: an emptied database per test).
STORE_PARAMETRISED = {"test_engine_basics", "test_workflow_semantics", "test_queues", "test_runs"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in STORE_PARAMETRISED and "db_store" in metafunc.fixturenames:
        metafunc.parametrize("db_store", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_store(request: pytest.FixtureRequest) -> str:
    """Which store ``db_path`` names: ``sqlite`` unless the module is parametrised."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def db_path(tmp_path: Path, db_store: str, request: pytest.FixtureRequest) -> str:
    """The engine's ``db``: a SQLite file, or the URL of an empty PostgreSQL database."""
    if db_store == "postgresql":
        return str(request.getfixturevalue("pg_server").store_url())
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
