"""Files: read/write/stat/list/move/delete, streaming of big files, tar trees."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from host.sandbox import FileNotFoundInSandbox, Sandbox, SupervisorError

# One sandbox for the whole module (conftest's module_sandbox, in the module's event
# loop): each test works on paths of its own, so a container start-up per test buys
# nothing.
pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture
def sandbox(module_sandbox: Sandbox) -> Sandbox:
    return module_sandbox


async def test_write_and_read_text_and_binary(sandbox: Sandbox) -> None:
    await sandbox.write_file("notes.txt", "héllo\n")
    assert await sandbox.read_file("notes.txt") == "héllo\n".encode()
    blob = os.urandom(700_000)  # bigger than one frame: streamed both ways
    await sandbox.write_file("/home/user/blob.bin", blob)
    assert await sandbox.read_file("blob.bin") == blob
    assert (await sandbox.exec(["sha256sum", "blob.bin"])).stdout.split()[0] == (
        hashlib.sha256(blob).hexdigest()
    )


async def test_mode_and_parents(sandbox: Sandbox) -> None:
    await sandbox.write_file("bin/tool.sh", "#!/bin/sh\necho tool\n", mode=0o755, parents=True)
    assert (await sandbox.stat("bin/tool.sh")).mode == 0o755
    assert (await sandbox.exec("./bin/tool.sh")).stdout == "tool\n"
    with pytest.raises(FileNotFoundInSandbox) as info:
        await sandbox.write_file("missing/dir/file.txt", "x")
    assert info.value.path == "/home/user/missing/dir/file.txt"


async def test_overwrite_keeps_mode_and_is_atomic(sandbox: Sandbox) -> None:
    await sandbox.write_file("run.sh", "echo 1", mode=0o700)
    await sandbox.write_file("run.sh", "echo 2")
    assert (await sandbox.stat("run.sh")).mode == 0o700
    assert await sandbox.read_file("run.sh") == b"echo 2"
    # No temporary files are left beside the target.
    assert [e.name for e in await sandbox.readdir(".") if e.name.startswith(".agentvm-")] == []


async def test_stat_exists_readdir(sandbox: Sandbox) -> None:
    await sandbox.write_files({"d/a.txt": "aa", "d/b/c.txt": "ccc"})
    info = await sandbox.stat("d/a.txt")
    assert (info.type, info.size, info.name, info.path) == (
        "file",
        2,
        "a.txt",
        "/home/user/d/a.txt",
    )
    assert (await sandbox.stat("d")).type == "dir"
    assert await sandbox.exists("d/b/c.txt") and not await sandbox.exists("d/zzz")
    assert [(e.name, e.type) for e in await sandbox.readdir("d")] == [
        ("a.txt", "file"),
        ("b", "dir"),
    ]
    names = sorted(e.name for e in await sandbox.readdir_recursive("d"))
    assert names == ["a.txt", "b", "b/c.txt"]
    assert await sandbox.read_files(["d/a.txt", "d/b/c.txt"]) == {
        "d/a.txt": b"aa",
        "d/b/c.txt": b"ccc",
    }


async def test_readdir_recursive_of_a_big_tree(sandbox: Sandbox) -> None:
    await sandbox.exec("mkdir -p big && cd big && for i in $(seq 1 1500); do : > f$i; done")
    entries = await sandbox.readdir_recursive("big")
    assert len(entries) == 1500
    limited = await sandbox.readdir_recursive("big", max_entries=10)
    assert len(limited) == 10


async def test_mkdir_move_delete(sandbox: Sandbox) -> None:
    await sandbox.mkdir("x/y/z")
    await sandbox.write_file("x/y/z/f", "data")
    await sandbox.move("x/y", "moved")
    assert await sandbox.read_file("moved/z/f") == b"data"
    await sandbox.write_file("other", "o")
    with pytest.raises(SupervisorError) as info:
        await sandbox.move("other", "moved/z/f")
    assert info.value.errno_name == "EEXIST"
    await sandbox.move("other", "moved/z/f", overwrite=True)
    assert await sandbox.read_file("moved/z/f") == b"o"
    # Across file systems (home volume -> /tmp tmpfs).
    await sandbox.move("moved", "/tmp/moved")
    assert await sandbox.exists("/tmp/moved/z/f")
    with pytest.raises(SupervisorError) as info:
        await sandbox.delete("/tmp/moved")
    assert info.value.errno_name == "ENOTEMPTY"
    await sandbox.delete("/tmp/moved", recursive=True)
    assert not await sandbox.exists("/tmp/moved")


async def test_not_found_errors_name_the_path(sandbox: Sandbox) -> None:
    for call in (
        sandbox.read_file("nope/file.txt"),
        sandbox.stat("nope/file.txt"),
        sandbox.readdir("nope/file.txt"),
        sandbox.delete("nope/file.txt"),
        sandbox.move("nope/file.txt", "elsewhere"),
    ):
        with pytest.raises(FileNotFoundInSandbox) as info:
            await call
        assert info.value.path == "/home/user/nope/file.txt"
        assert "/home/user/nope/file.txt" in str(info.value)
        assert isinstance(info.value, FileNotFoundError)


async def test_reading_a_directory_fails_clearly(sandbox: Sandbox) -> None:
    with pytest.raises(SupervisorError) as info:
        await sandbox.read_file("/home/user")
    assert info.value.errno_name == "EISDIR"


SIZE = 200 * 1024 * 1024
CHUNK = 1024 * 1024


async def _generated() -> AsyncIterator[bytes]:
    """200 MB of non-repeating bytes, made one chunk at a time."""
    for i in range(SIZE // CHUNK):
        yield hashlib.sha256(i.to_bytes(8, "big")).digest() * (CHUNK // 32)


async def test_200_mb_round_trip_with_bounded_host_memory(sandbox: Sandbox) -> None:
    expected = hashlib.sha256()
    async for chunk in _generated():
        expected.update(chunk)
    tracemalloc.start()
    try:
        written = await sandbox.write_file("big.bin", _generated())
        got = hashlib.sha256()
        size = 0
        async for chunk in sandbox.read_file_stream("big.bin"):
            got.update(chunk)
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == size == SIZE
    assert got.hexdigest() == expected.hexdigest()
    # The file is never held whole: peak Python allocations stay a small fraction of it.
    assert peak < 48 * 1024 * 1024, f"peak host allocation {peak / 2**20:.1f} MiB"
    inside = await sandbox.exec(["sha256sum", "big.bin"], timeout=120)
    assert inside.stdout.split()[0] == expected.hexdigest()


async def test_directory_upload_and_download_as_tar(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "README").write_text("readme\n")
    (src / "pkg" / "deep" / "data.bin").write_bytes(os.urandom(3_000_000))
    script = src / "pkg" / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    await sandbox.upload_dir(src, "project")
    assert (await sandbox.exec("./project/pkg/run.sh")).stdout == "ran\n"
    assert (await sandbox.read_file("project/README")) == b"readme\n"
    owner = await sandbox.exec(["stat", "-c", "%U", "project/pkg/deep/data.bin"])
    assert owner.stdout == "user\n"

    await sandbox.write_file("project/made-inside.txt", "inside")
    dest = tmp_path / "dest"
    await sandbox.download_dir("project", dest)
    assert (dest / "made-inside.txt").read_text() == "inside"
    assert (dest / "pkg" / "deep" / "data.bin").read_bytes() == (
        src / "pkg" / "deep" / "data.bin"
    ).read_bytes()
    assert os.access(dest / "pkg" / "run.sh", os.X_OK)


async def test_tar_errors(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundInSandbox):
        async for _ in sandbox.download_tar("no-such-dir"):
            pass
    with pytest.raises(SupervisorError) as info:
        await sandbox.upload_tar("target", b"this is not a tar archive" * 100)
    assert info.value.errno_name == "EIO" and "tar" in str(info.value)
