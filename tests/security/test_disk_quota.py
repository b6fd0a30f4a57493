"""The disk quota of /home/user: code inside a real sandbox fills its home directory
and gets ENOSPC from the kernel, while the host's disk only holds the vm's image
(a sparse file that never grows past the quota).

Before the fix ``dd if=/dev/zero of=/home/user/big`` wrote into Docker's volume
directory on the host's root file system until that was full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from host.sandbox import DockerBackend, Sandbox, SandboxLimits, SandboxSpec
from host.sandbox.disk import LoopDisks, _backing_file, _loop_devices, unavailable_reason
from host.sandbox.errors import SandboxError
from host.vm import SandboxManager, VmOptions, vm_actor
from host.vm.manager import SandboxRecord
from orchestrator import Engine, setup
from tests.sandbox.conftest import HOST_ID, docker_engine, image
from tests.support import eventually

__all__ = ["docker_engine", "image"]

QUOTA_MB = 64
LIMITS = SandboxLimits(memory_mb=256, cpus=1.0, pids=128, tmp_mb=64, disk_mb=QUOTA_MB)

pytestmark = pytest.mark.skipif(
    unavailable_reason(Path("/tmp")) is not None,
    reason=f"loop-device disks unavailable here: {unavailable_reason(Path('/tmp'))}",
)


@pytest.fixture
async def backend(image: str, tmp_path: Path) -> AsyncIterator[DockerBackend]:
    be = await DockerBackend.connect(HOST_ID, disk_dir=tmp_path / "disks")
    assert be.disks is not None, be.disk_quota_off
    try:
        yield be
    finally:
        for info in await be.list_sandboxes():
            await be.remove(info.id)
        for volume in await be.list_volumes():
            await be.remove_volume(volume)
        await be.close()


@pytest.fixture
async def sandbox(backend: DockerBackend, image: str) -> Sandbox:
    return await backend.create(SandboxSpec(image=image, key=["quota"], limits=LIMITS))


def _disks(backend: DockerBackend) -> LoopDisks:
    assert backend.disks is not None
    return backend.disks


def _loops_of(image: Path) -> list[str]:
    """Loop devices attached to ``image``."""
    return [name for name in _loop_devices() if _backing_file(name) == str(image)]


def _allocated(path: Path) -> int:
    """Bytes the file really takes on the host's disk (it is sparse)."""
    return os.stat(path).st_blocks * 512


async def test_filling_home_fails_with_enospc_and_the_host_holds_at_most_the_quota(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    image = _disks(backend).image(sandbox.volume)
    # The home directory is the image's skeleton, owned by the sandbox user.
    home = await sandbox.exec("stat -c %u /home/user; ls -A /home/user")
    assert home.stdout.split()[0] == "1000" and ".bashrc" in home.stdout

    # The attack: write 200 MiB into a 64 MiB home.
    attack = await sandbox.exec("dd if=/dev/zero of=/home/user/big bs=1M count=200")
    assert attack.exit_code != 0
    assert "No space left on device" in attack.stderr
    # The host's disk holds the image only, and it never grew past the quota.
    assert _allocated(image) <= QUOTA_MB * 2**20
    # Sweep up the last free blocks, then the supervisor's writes fail too: a typed
    # error with the errno.
    await sandbox.exec("cat /dev/zero > /home/user/crumbs; sync")
    with pytest.raises(SandboxError) as err:
        await sandbox.write_file("more.bin", b"x" * 200_000)
    assert err.value.errno_name == "ENOSPC"
    assert err.value.http_status == 507
    # A streamed write (many frames) gets the same typed error, not a closed channel.
    with pytest.raises(SandboxError) as err:
        await sandbox.write_file("more.bin", b"x" * (3 * 2**20))
    assert err.value.errno_name == "ENOSPC"

    # /tmp is a size-limited tmpfs (RAM, bounded by tmp_mb), not the host's disk.
    tmp = await sandbox.exec("stat -f -c %T /tmp; df -m --output=size /tmp | tail -1")
    assert tmp.stdout.split() == ["tmpfs", "64"]

    # Deleting frees the space: the vm works again.
    assert (await sandbox.exec("rm /home/user/big")).exit_code == 0
    again = await sandbox.exec("dd if=/dev/zero of=/home/user/ok bs=1M count=10 && sync")
    assert again.exit_code == 0, again.stderr
    await sandbox.write_file("more.bin", b"x" * 4096)


async def test_the_sandbox_cannot_reach_the_loop_device(sandbox: Sandbox) -> None:
    # No loop device (nor any block device) in the container's /dev.
    devs = await sandbox.exec("ls /dev; find /dev -type b")
    assert "loop" not in devs.stdout
    # /home/user is mounted nodev,nosuid; remounting or mounting the device fails.
    mountinfo = (await sandbox.read_file("/proc/self/mountinfo")).decode()
    home = next(line for line in mountinfo.splitlines() if line.split()[4] == "/home/user")
    assert "nodev" in home.split()[5] and "nosuid" in home.split()[5]
    assert " - ext4 " in home
    remount = await sandbox.exec("mount -o remount,size=100G /home/user")
    assert remount.exit_code != 0
    # Nor learn about other vms' disks from sysfs (a loop device's backing file names
    # its image): the host's block devices are hidden.
    sysfs = await sandbox.exec(
        "cat /sys/block/*/loop/backing_file /sys/class/block/*/loop/backing_file "
        "/sys/dev/block/*/loop/backing_file 2>/dev/null"
    )
    assert ".img" not in sysfs.stdout


async def test_files_survive_a_stop_and_a_lost_loop_device(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    disks = _disks(backend)
    await sandbox.write_file("keep.txt", b"still here")
    await backend.stop(sandbox)
    # What a host reboot does: the loop device is gone.
    for name in _loops_of(disks.image(sandbox.volume)):
        await asyncio.to_thread(subprocess.run, ["losetup", "-d", f"/dev/{name}"], check=True)
    assert _loops_of(disks.image(sandbox.volume)) == []

    await sandbox.ensure_running()  # re-attaches before Docker mounts the volume
    assert await sandbox.read_file("keep.txt") == b"still here"
    assert len(_loops_of(disks.image(sandbox.volume))) == 1
    # Still the same size-limited file system.
    size = await sandbox.exec("df -m --output=size /home/user | tail -1")
    assert int(size.stdout) <= QUOTA_MB


async def test_remove_deletes_the_image_and_detaches_the_loop_device(
    backend: DockerBackend, sandbox: Sandbox
) -> None:
    image = _disks(backend).image(sandbox.volume)
    assert image.exists() and len(_loops_of(image)) == 1
    await backend.remove(sandbox)
    assert not image.exists()

    async def loops() -> list[str]:
        return _loops_of(image)

    await eventually(loops, lambda names: names == [], what="the loop device detached")
    assert sandbox.volume not in await backend.list_volumes()


async def test_no_loop_devices_falls_back_with_a_warning(
    image: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # the disk directory cannot be created under a file
    with caplog.at_level(logging.WARNING, logger="agentvm.sandbox"):
        be = await DockerBackend.connect(HOST_ID, disk_dir=blocker / "disks")
    try:
        assert be.disks is None and be.disk_quota_off
        assert "NO size limit" in caplog.text
    finally:
        await be.close()


# -- through the vm actor: the per-vm option, the warm pool, destroy and the reaper ------


async def test_vm_disk_option_pool_destroy_and_reaper(image: str, tmp_path: Path) -> None:
    host_id = f"dq{uuid.uuid4().hex[:8]}"
    disk_dir = tmp_path / "disks"
    defaults = VmOptions(limits=LIMITS)
    manager = await SandboxManager.open(
        host_id=host_id, pool_size=1, defaults=defaults, reap_interval=None, disk_dir=disk_dir
    )
    engine = Engine(setup(use={"vm": vm_actor(manager)}), db=str(tmp_path / "agentvm.db"))
    await engine.start()
    disks = manager.backend.disks
    assert disks is not None
    try:
        manager.attach(engine)
        await manager.wait_pool()
        client = engine.client()

        # A vm from the warm pool adopts the pool container's disk.
        pooled = client.vm.get_or_create(["pooled"])
        attack = await pooled.exec("dd if=/dev/zero of=big bs=1M count=200")
        assert "No space left on device" in attack["stderr"]
        pooled_rec = SandboxRecord.from_json((await pooled.fetch_state())["sandbox"])
        assert disks.exists(pooled_rec.volume)

        # The per-vm option: a smaller disk than the host default.
        small = client.vm.get_or_create(["small"], input={"limits": {"disk_mb": 32}})
        size = await small.exec("df -m --output=size /home/user | tail -1")
        assert int(size["stdout"]) <= 32
        small_rec = SandboxRecord.from_json((await small.fetch_state())["sandbox"])

        # Destroy removes the image and its loop device.
        await small.destroy()
        assert not disks.exists(small_rec.volume)
        assert _loops_of(disks.image(small_rec.volume)) == []

        # An orphan disk (its volume and container are gone) is reaped.
        orphan = f"agentvm-{host_id}-0rphan0000-home"
        await disks.create(orphan, 16)
        assert orphan in await manager.reap()
        assert not disks.exists(orphan) and _loops_of(disks.image(orphan)) == []
        assert disks.exists(pooled_rec.volume)  # owned: kept

        await pooled.destroy()
        assert not disks.exists(pooled_rec.volume)
    finally:
        await engine.stop()
        await manager.close()
        for volume in await _leftovers(host_id, disk_dir):
            pytest.fail(f"left behind: {volume}")


async def _leftovers(host_id: str, disk_dir: Path) -> list[str]:
    """Remove whatever the test left (containers, volumes, disks); return the disks."""
    be = await DockerBackend.connect(host_id, disk_dir=disk_dir)
    try:
        for info in await be.list_sandboxes():
            await be.remove(info.id)
        volumes = await be.list_volumes()
        for volume in volumes:
            await be.remove_volume(volume)
        return volumes
    finally:
        await be.close()
