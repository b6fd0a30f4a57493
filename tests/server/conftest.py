from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server.live import LiveServer, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server (no token) shared by the HTTP tests; each test uses its own keys."""
    db = tmp_path_factory.mktemp("server") / "agentvm.db"
    live = start_server(db)
    yield live
    assert live.stop() == 0


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A key part unique to this test."""
    return request.node.name.replace("[", "-").replace("]", "")
