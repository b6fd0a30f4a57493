"""Fixtures of the reliability suite: a live host (``agentvm serve`` in a subprocess,
the real vm actor and orchestrators, real Docker), the fake model as its upstream, a
buggy git repository for fixBug runs, and samplers for the figures each test prints."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.server.live import LiveServer, start_server
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic

HOST_KEY = "sk-ant-reliability-host-key-8e41"
BUNDLES = ["common", "coding-agent"]
FIX_SED = {"command": "sed -i 's/return a - b/return a + b/' calc.py"}

StartHost = Callable[..., LiveServer]


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The vm image with the coding agent, built before any deadline starts."""
    from vm_images.builder import ensure_image

    client = docker_client()
    try:
        return ensure_image(BUNDLES, client=client)
    finally:
        client.close()


@pytest.fixture
def fake_model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def host_id() -> str:
    return f"rel-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def host(
    agent_image: str, tmp_path: Path, host_id: str, fake_model: FakeAnthropic
) -> Iterator[StartHost]:
    """``start(**env)`` → a live host on the test's database (a second call is a
    restart). Extra keyword arguments are ``AGENTVM_*``-style environment overrides;
    ``DOCKER_HOST`` among them points the host at another engine."""
    servers: list[LiveServer] = []
    engines: set[str | None] = set()

    def start(db: Path | None = None, **extra: str) -> LiveServer:
        env = {
            "AGENTVM_HOST_ID": host_id,
            "AGENTVM_WARM_POOL": "0",
            # Either way of sending a local repo (path or uploaded blob) is allowed.
            "AGENTVM_REPO_ROOTS": str(tmp_path),
            "ANTHROPIC_BASE_URL": fake_model.url,
            "ANTHROPIC_API_KEY": HOST_KEY,
            **extra,
        }
        engines.add(extra.get("DOCKER_HOST"))
        server = start_server(db or tmp_path / "host.db", env=env, registry=None, deadline_s=120)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.stop()
    for address in engines:
        try:
            client = docker.DockerClient(base_url=address) if address else docker.from_env()
            remove_host(client, host_id)
            client.close()
        except docker.errors.DockerException:
            pass  # a private engine already stopped took its containers with it


def make_buggy_repo(parent: Path, name: str = "calc-repo") -> Path:
    """A git repository whose test fails: ``add`` subtracts."""
    repo = parent / name
    repo.mkdir(parents=True)
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
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    return repo


@pytest.fixture
def buggy_repo(tmp_path: Path) -> Path:
    return make_buggy_repo(tmp_path)


def fix_request(repo: Path, marker: str, vm_key: str) -> dict[str, Any]:
    """A fixBug body whose prompt carries ``marker`` (so a fake-model script answers it)."""
    return {
        "repo": str(repo),
        "issue": f"{marker}: add(2, 3) returns -1",
        "test_command": "sh test_calc.sh",
        "vm_key": vm_key,
    }


def proc_usage(pid: int) -> dict[str, int]:
    """Resident memory (KiB) and open file descriptors of a live process."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def report(name: str, **figures: Any) -> None:
    """One JSON line of figures (visible with ``pytest -s``) for docs/security.md."""
    print(json.dumps({"test": name, **figures}), flush=True)
