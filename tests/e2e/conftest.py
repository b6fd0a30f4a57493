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


@pytest.fixture
def host(
    e2e_images: None, tmp_path: Path, host_id: str, fake_model: FakeAnthropic
) -> Iterator[Callable[[], LiveServer]]:
    """``start()`` → a live host on the same database each time (a restart);
    ``start(AGENTVM_X="...")`` adds settings."""
    servers: list[LiveServer] = []
    env = {
        "AGENTVM_HOST_ID": host_id,
        "AGENTVM_WARM_POOL": "0",
        "AGENTVM_REPO_ROOTS": "",
        "ANTHROPIC_BASE_URL": fake_model.url,
        "ANTHROPIC_API_KEY": HOST_KEY,
    }

    def start(**settings: str) -> LiveServer:
        server = start_server(
            tmp_path / "host.db", env={**env, **settings}, registry=None, deadline_s=120
        )
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
