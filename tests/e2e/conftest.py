"""End-to-end fixtures: the real host (`agentvm serve` with the vm actor and the
built-in orchestrators) in a subprocess, real Docker sandboxes with the coding
agent, and the fake Anthropic server as the gateway's upstream."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.server.live import LiveServer, start_server
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic

ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "sk-ant-e2e-host-key-5d2b9c0e7a41"


@pytest.fixture(scope="session")
def e2e_images() -> None:
    """Docker up and the vm image (common + coding-agent) built before any server
    starts, so no test's deadline includes the one-time image build."""
    client = docker_client()
    from vm_images.builder import ensure_image

    ensure_image(["common", "coding-agent"], client=client)
    client.close()


@pytest.fixture
def host_id() -> Iterator[str]:
    """A host id of this test alone; its containers and volumes are removed after."""
    hid = f"e2e-{uuid.uuid4().hex[:8]}"
    yield hid
    client = docker.from_env()
    remove_host(client, hid)
    client.close()


@pytest.fixture
def fake_model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


def start_host(db: Path, host_id: str, model: FakeAnthropic, **settings: str) -> LiveServer:
    """The real host on ``db``, the fake model as its upstream."""
    env = {
        "AGENTVM_HOST_ID": host_id,
        "AGENTVM_WARM_POOL": "0",
        "AGENTVM_REPO_ROOTS": "",
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_API_KEY": HOST_KEY,
    }
    return start_server(db, env={**env, **settings}, registry=None, deadline_s=120)


@pytest.fixture
def host(
    e2e_images: None, tmp_path: Path, host_id: str, fake_model: FakeAnthropic
) -> Iterator[Callable[[], LiveServer]]:
    """``start()`` → a live host on the same database each time (a restart);
    ``start(AGENTVM_X="...")`` adds settings."""
    servers: list[LiveServer] = []

    def start(**settings: str) -> LiveServer:
        server = start_host(tmp_path / "host.db", host_id, fake_model, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()


@pytest.fixture
def own_host() -> None:
    """Used (``@pytest.mark.usefixtures("own_host")``) by a test under ``shared_host``
    that kills or restarts its host: it gets a host of its own."""


class SharedHosts:
    """A module's live hosts, one per distinct settings (each its own host id, so no
    host's reaper takes another's containers), started on first use."""

    def __init__(self, root: Path, model: FakeAnthropic) -> None:
        self.root = root
        self.model = model
        self.servers: dict[tuple[tuple[str, str], ...], tuple[str, LiveServer]] = {}

    def get(self, settings: dict[str, str]) -> LiveServer:
        key = tuple(sorted(settings.items()))
        if key not in self.servers:
            host_id = f"e2e-{uuid.uuid4().hex[:8]}"
            db = self.root / f"{host_id}.db"
            self.servers[key] = (host_id, start_host(db, host_id, self.model, **settings))
        return self.servers[key][1]

    def close(self) -> None:
        client = docker.from_env()
        try:
            for host_id, server in self.servers.values():
                if server.proc.poll() is None:
                    server.stop()
                remove_host(client, host_id)
        finally:
            client.close()


@pytest.fixture(scope="module")
def module_model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def module_hosts(
    e2e_images: None, tmp_path_factory: pytest.TempPathFactory, module_model: FakeAnthropic
) -> Iterator[SharedHosts]:
    hosts = SharedHosts(tmp_path_factory.mktemp("e2e-hosts"), module_model)
    yield hosts
    hosts.close()


@pytest.fixture
def shared_model(module_model: FakeAnthropic) -> FakeAnthropic:
    """The module's fake model, its scripts and recorded requests cleared for this
    test (tests use markers of their own)."""
    module_model.reset()
    module_model.fallback = None
    return module_model


@pytest.fixture
def shared_host(
    request: pytest.FixtureRequest,
    module_hosts: SharedHosts,
    shared_model: FakeAnthropic,
    tmp_path: Path,
    host_id: str,
) -> Iterator[Callable[..., LiveServer]]:
    """Like ``host``, but ``start(**settings)`` returns the module's running host with
    those settings (a start-up per module, not per test): for tests that neither
    restart nor kill it and use keys, markers and names of their own. A test using
    ``own_host`` (it kills or restarts its host) gets one of its own."""
    own = "own_host" in request.fixturenames
    servers: list[LiveServer] = []

    def start(**settings: str) -> LiveServer:
        if not own:
            return module_hosts.get(settings)
        server = start_host(tmp_path / "host.db", host_id, shared_model, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()


@pytest.fixture
def buggy_repo(tmp_path: Path) -> Path:
    """A git repository whose test fails: ``add`` subtracts."""
    repo = tmp_path / "calc-repo"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_calc.sh").write_text(
        "#!/bin/sh\npython3 -c 'import calc; assert calc.add(2, 3) == 5, calc.add(2, 3)'\n"
    )
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "calc"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo
