"""File reads: regular files only, streamed, with a size cap.

The attacker is code in a real sandbox that plants a 2 GiB sparse file, a FIFO nobody
writes to, or a symlink to a device where the host will read; the host's memory is
measured as peak RSS (this process for the sandbox API, the server subprocess for
``GET /vms/.../files``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from host.sandbox import Sandbox
from host.sandbox.errors import FileTooLarge, SupervisorError
from tests.sandbox.conftest import backend, docker_engine, image, sandbox, spec
from tests.server.live import LiveServer, start_server
from tests.support.docker import remove_host

__all__ = ["backend", "docker_engine", "image", "sandbox", "spec"]

MiB = 1024 * 1024
PLANT = (
    "truncate -s 2G /home/user/huge && truncate -s 300M /home/user/big && "
    "mkfifo /home/user/fifo && ln -s /dev/zero /home/user/zero"
)


def _peak(pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _reset_peak(pid: str = "self") -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def test_read_file_refuses_specials_and_huge_files(sandbox: Sandbox) -> None:
    assert (await sandbox.exec(PLANT)).exit_code == 0
    _reset_peak()
    before = _peak()
    # A FIFO with no writer and a link to an endless device: refused, not hung.
    for special in ("fifo", "zero"):
        with pytest.raises(SupervisorError) as err:
            await sandbox.read_file(special)
        assert err.value.errno_name == "EINVAL" and err.value.http_status == 400
    # Whole-file reads stop at a cap (default 64 MiB), before any byte moves.
    with pytest.raises(FileTooLarge) as too_big:
        await sandbox.read_file("huge")
    assert too_big.value.http_status == 413
    with pytest.raises(FileTooLarge):
        async for _ in sandbox.read_file_stream("huge", max_size=MiB):
            pass
    # Streaming a big file holds the window, not the file.
    total = 0
    async for chunk in sandbox.read_file_stream("big"):
        total += len(chunk)
    assert total == 300 * MiB
    assert _peak() - before < 64 * MiB


async def test_read_file_cap_holds_for_a_growing_file(sandbox: Sandbox) -> None:
    # Small at the stat, grows while being read: the stream stops at the cap.
    await sandbox.write_file("grow", b"")
    grower = await sandbox.spawn("while :; do head -c 1048576 /dev/zero >> grow; done")
    try:
        with pytest.raises(FileTooLarge):
            for _ in range(1000):
                async for _chunk in sandbox.read_file_stream("grow", max_size=4 * MiB):
                    pass
    finally:
        await grower.kill()


@pytest.fixture
def vm_server(image: str, tmp_path: Path) -> Iterator[LiveServer]:
    """The real host (vm actor on Docker) in a subprocess."""
    host_id = f"fr-{uuid.uuid4().hex[:8]}"
    env = {
        "AGENTVM_HOST_ID": host_id,
        "AGENTVM_WARM_POOL": "0",
        "AGENTVM_VM_BUNDLES": '["common"]',
        "AGENTVM_MAX_DOWNLOAD": str(512 * MiB),
    }
    server = start_server(tmp_path / "host.db", env=env, registry=None, deadline_s=120)
    yield server
    server.stop()
    client = docker.from_env()
    remove_host(client, host_id)
    client.close()


def test_http_download_is_streamed_capped_and_regular_only(vm_server: LiveServer) -> None:
    with httpx.Client(base_url=vm_server.url, timeout=120) as http:
        key = "files-attack"
        planted = http.post(f"/actors/vm/{key}/actions/exec", json={"args": [PLANT]})
        assert planted.status_code == 200, planted.text
        assert planted.json()["output"]["exit_code"] == 0
        pid = str(vm_server.proc.pid)
        _reset_peak(pid)
        before = _peak(pid)

        huge = http.get(f"/vms/{key}/files/home/user/huge")
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "file_too_large"
        assert huge.json()["error"]["metadata"]["path"] == "/home/user/huge"

        for special in ("fifo", "zero"):
            got = http.get(f"/vms/{key}/files/home/user/{special}")
            assert got.status_code == 400, got.text
            assert got.json()["error"]["group"] == "sandbox"

        total = 0
        with http.stream("GET", f"/vms/{key}/files/home/user/big") as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_bytes():
                total += len(chunk)
        assert total == 300 * MiB
        # 300 MiB went through; the server held a window's worth, not the file.
        assert _peak(pid) - before < 96 * MiB
