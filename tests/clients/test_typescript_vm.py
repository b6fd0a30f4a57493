"""The TypeScript client against a live real host (Docker sandboxes): exec, bytes,
the raw file routes, a file watch over SSE, a port and its preview, a typed 404."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.live import LiveServer, start_server
from tests.support.docker import docker_client, remove_host
from vm_images.builder import ensure_image

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
NODE = shutil.which("node")
TOKEN = "ts-vm-token"

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
]


@pytest.fixture
def real_host(tmp_path: Path) -> Iterator[LiveServer]:
    """The real host (vm actor, Docker) with a token; its containers removed after."""
    client = docker_client()
    ensure_image(["common"], client=client)
    host_id = f"ts{os.getpid()}-{uuid.uuid4().hex[:6]}"
    env = {"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}
    server = start_server(tmp_path / "host.db", token=TOKEN, env=env, registry=None, deadline_s=120)
    try:
        yield server
    finally:
        server.stop()
        remove_host(client, host_id)
        client.close()


def test_vm_through_the_typescript_client(real_host: LiveServer) -> None:
    build = subprocess.run(
        [str(CLIENT / "build.sh")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, build.stderr
    assert NODE is not None
    out = subprocess.run(
        [NODE, str(CLIENT / "test" / "vm_smoke.mjs"), real_host.url, TOKEN, "ts-vm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "vm smoke: ok" in out.stdout
