"""Workspace checkpoints and forks of a vm (host/vm/actions_checkpoints.py): real
Docker, real SQLite, the archives on the test's disk."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from host.vm.checkpoints import root_for, vm_dir
from orchestrator.errors import AgentVMError, InvalidRequest
from tests.server.live import LiveServer, agentvm, start_server
from tests.support.docker import remove_host
from tests.support.fake_anthropic import FakeAnthropic, Turn

from . import test_vm_sessions as base
from .conftest import HOST_ID, VmHost
from .test_session_features import texts
from .test_vm_sessions import HostFactory

# The vm session tests' fixtures (a gateway, the agent image, the vm actor).
agent_image = base.agent_image
session_host = base.session_host

pytestmark = pytest.mark.docker

# A workspace with content, a symlink, an empty dir and particular modes.
SEED = r"""
set -e
cd /home/user
mkdir -p proj/sub empty
printf 'hello\n' > proj/a.txt
head -c 300000 /dev/urandom > proj/sub/blob.bin
printf '#!/bin/sh\necho hi\n' > proj/run.sh && chmod 755 proj/run.sh
printf 'secret' > proj/key && chmod 600 proj/key
ln -s a.txt proj/link
"""
# Every entry under /home/user: path, type, mode, link target, and a hash of files.
LISTING = (
    "cd /home/user && find . -mindepth 1 -printf '%p %y %m %l\\n' | sort && "
    "find . -type f -exec sha256sum {} + | sort"
)


async def listing(vm: Any) -> str:
    res = await vm.call("exec", ["sh", "-c", LISTING])
    assert res["exit_code"] == 0, res
    out: str = res["stdout"]
    return out


async def seeded(h: VmHost, key: str) -> Any:
    vm = h.client.vm.get_or_create([key])
    res = await vm.call("exec", ["sh", "-c", SEED])
    assert res["exit_code"] == 0, res
    return vm


async def test_restore_gives_the_old_workspace_back_exactly(vm_host: Any) -> None:
    async with vm_host() as h:
        vm = await seeded(h, "ck-restore")
        before = await listing(vm)
        assert "proj/link l 777 a.txt" in before and "./empty d" in before
        entry = await vm.call("checkpoint", "before-fix")
        assert entry["name"] == "before-fix" and entry["size"] > 0 and len(entry["sha256"]) == 64

        change = (
            "cd /home/user && printf changed > proj/a.txt && rm -r proj/sub empty proj/link"
            " && chmod 644 proj/run.sh && echo new > new.txt"
        )
        assert (await vm.call("exec", ["sh", "-c", change]))["exit_code"] == 0
        assert await listing(vm) != before

        await vm.call("restore", "before-fix")
        assert await listing(vm) == before
        assert await vm.call("read_file", "proj/a.txt") == b"hello\n"


async def test_fork_is_an_independent_vm(vm_host: Any) -> None:
    async with vm_host() as h:
        vm = await seeded(h, "ck-origin")
        before = await listing(vm)
        await vm.call("checkpoint", "base")
        out = await vm.call("fork", "ck-forked", {"checkpoint": "base"})
        assert out["key"] == ["ck-forked"] and out["checkpoint"]["name"] == "base"
        forked = h.client.vm.get(["ck-forked"])
        assert await listing(forked) == before
        # Two containers: a write in one is not seen by the other, both ways.
        assert (await h.record(["ck-origin"])).name != (await h.record(["ck-forked"])).name
        await forked.call("write_file", "only-fork.txt", "f")
        await vm.call("write_file", "only-origin.txt", "o")
        assert not await vm.call("exists", "only-fork.txt")
        assert not await forked.call("exists", "only-origin.txt")
        # The fork has the checkpoint too, and can go back to it.
        assert [e["name"] for e in await forked.call("list_checkpoints")] == ["base"]
        await forked.call("restore", "base")
        assert await listing(forked) == before
        # A taken key is refused.
        with pytest.raises(AgentVMError):
            await vm.call("fork", "ck-forked", {"checkpoint": "base"})


async def test_list_delete_retention_and_destroy(
    vm_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTVM_CHECKPOINTS_MAX_PER_VM", "2")
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["ck-list"])
        for i in range(3):
            await vm.call("write_file", "n.txt", str(i))
            await vm.call("checkpoint", f"c{i}")
        # The oldest went first, from the manifest and from the disk.
        assert [e["name"] for e in await vm.call("list_checkpoints")] == ["c1", "c2"]
        directory = vm_dir(root_for(h.manager.db), await vm.resolve())
        assert sorted(p.name for p in directory.iterdir()) == [
            "c1.json", "c1.tar.gz", "c2.json", "c2.tar.gz"
        ]  # fmt: skip
        with pytest.raises(AgentVMError):
            await vm.call("restore", "c0")

        await vm.call("delete_checkpoint", "c1")
        assert [e["name"] for e in await vm.call("list_checkpoints")] == ["c2"]
        await vm.call("restore", "c2")
        assert await vm.call("read_file", "n.txt") == b"2"

        await vm.destroy()
        assert not directory.exists()


# Every bad name against one vm (not a vm, and so a container, per name).
BAD_NAMES: list[Any] = ["", "../up", "a/b", "x" * 65, "..", "sp ace", 7]


async def test_bad_names_are_refused_naming_the_field(vm_host: Any) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["ck-bad"])
        for bad in BAD_NAMES:
            for act in ("checkpoint", "restore", "delete_checkpoint"):
                with pytest.raises(InvalidRequest) as info:
                    await vm.call(act, bad)
                assert info.value.metadata.get("field") == "name", (act, bad)
            with pytest.raises(InvalidRequest) as info:
                await vm.call("fork", "other", {"checkpoint": bad})
            assert info.value.metadata.get("field") == "checkpoint", bad


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_host_memory_stays_bounded_while_checkpointing(vm_host: Any) -> None:
    """The host runs in this process: its RSS must not grow by the workspace's size
    while a 200 MB workspace is checkpointed and restored."""
    size_mb = 200
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["ck-big"])
        res = await vm.call(
            "exec",
            ["sh", "-c", f"head -c {size_mb}M /dev/urandom > /home/user/big.bin && sync"],
            {"timeout": 120},
        )
        assert res["exit_code"] == 0, res
        base = _rss()
        peak = base
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss())
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        try:
            entry = await vm.call("checkpoint", "big")
            await vm.call("restore", "big")
        finally:
            done.set()
            await sampler
        assert entry["raw_size"] >= size_mb * 1024 * 1024
        growth = peak - base
        assert growth < size_mb * 1024 * 1024 // 4, f"RSS grew by {growth / 1e6:.0f} MB"
        res = await vm.call("exec", ["sh", "-c", "stat -c %s /home/user/big.bin"])
        assert int(res["stdout"]) == size_mb * 1024 * 1024


@pytest.fixture
def vm_server(image: str, tmp_path: Path) -> Iterator[LiveServer]:
    """The real host (vm actor on Docker) in a subprocess; its containers removed after."""
    host_id = f"{HOST_ID}-ck"
    env = {"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}
    server = start_server(tmp_path / "host.db", env=env, registry=None, deadline_s=120)
    yield server
    server.stop()
    client = docker.from_env()
    remove_host(client, host_id)
    client.close()


def test_http_and_cli(vm_server: LiveServer) -> None:
    env = {"AGENTVM_URL": vm_server.url}
    with httpx.Client(base_url=vm_server.url, timeout=120) as http:
        put = http.post("/actors/vm/ck-http/actions/write_file", json={"args": ["a.txt", "one"]})
        assert put.status_code == 200, put.text
        res = http.post("/actors/vm/ck-http/actions/checkpoint", json={"args": ["before-fix"]})
        assert res.status_code == 200, res.text
        assert res.json()["output"]["name"] == "before-fix"
        bad = http.post("/actors/vm/ck-http/actions/checkpoint", json={"args": ["../x"]})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["metadata"]["field"] == "name"

    listed = agentvm("vm", "checkpoints", "ck-http", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)] == ["before-fix"]
    assert agentvm("vm", "exec", "ck-http", "--", "echo two > a.txt", env=env).returncode == 0
    made = agentvm("vm", "checkpoint", "ck-http", "after", env=env)
    assert made.returncode == 0 and json.loads(made.stdout)["name"] == "after", made.stderr
    forked = agentvm("vm", "fork", "ck-http", "ck-http2", "--checkpoint", "before-fix", env=env)
    assert forked.returncode == 0, forked.stderr
    assert agentvm("vm", "cat", "ck-http2", "/home/user/a.txt", env=env).stdout == b"one"
    restored = agentvm("vm", "restore", "ck-http", "before-fix", env=env)
    assert restored.returncode == 0, restored.stderr
    assert agentvm("vm", "cat", "ck-http", "/home/user/a.txt", env=env).stdout == b"one"
    missing = agentvm("vm", "restore", "ck-http", "nope", env=env)
    assert missing.returncode == 1 and b"not_found" in missing.stderr


async def test_identical_content_is_stored_once(vm_host: Any) -> None:
    async with vm_host() as h:
        vm = await seeded(h, "ck-dedup")
        first = await vm.call("checkpoint", "one")
        second = await vm.call("checkpoint", "two")
        assert first["sha256"] == second["sha256"]
        directory = vm_dir(root_for(h.manager.db), await vm.resolve())
        one, two = (directory / f"{n}.tar.gz" for n in ("one", "two"))
        assert one.stat().st_ino == two.stat().st_ino
        await vm.call("delete_checkpoint", "one")
        await vm.call("restore", "two")
        assert await vm.call("read_file", "proj/a.txt") == b"hello\n"


async def test_sandbox_cannot_make_a_checkpoint_unbounded(
    vm_host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker inside the vm: incompressible data past the size cap, then a
    sparse terabyte (a tar stream that compresses to nothing and never ends)."""
    monkeypatch.setenv("AGENTVM_CHECKPOINTS_MAX_BYTES", str(1024 * 1024))
    monkeypatch.setenv("AGENTVM_CHECKPOINT_TIMEOUT", "2")
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["ck-attack"])
        await vm.call("write_file", "small.txt", "ok")
        await vm.call("checkpoint", "good")
        directory = vm_dir(root_for(h.manager.db), await vm.resolve())
        noise = "head -c 4M /dev/urandom > /home/user/noise.bin"
        assert (await vm.call("exec", ["sh", "-c", noise]))["exit_code"] == 0
        with pytest.raises(AgentVMError) as info:
            await vm.call("checkpoint", "big")
        assert (info.value.group, info.value.code) == ("checkpoint", "too_large")

        # The size cap alone would stop the terabyte too (zeros deflate ~1000:1): lift
        # it so the deadline is what ends this one.
        monkeypatch.setenv("AGENTVM_CHECKPOINTS_MAX_BYTES", str(64 * 1024**3))
        sparse = "rm /home/user/noise.bin && truncate -s 1T /home/user/sparse.img"
        assert (await vm.call("exec", ["sh", "-c", sparse]))["exit_code"] == 0
        with pytest.raises(AgentVMError) as info:
            await vm.call("checkpoint", "huge")
        assert (info.value.group, info.value.code) == ("checkpoint", "timeout")

        # Nothing of either was kept; the vm still answers and the good one restores.
        assert [e["name"] for e in await vm.call("list_checkpoints")] == ["good"]
        assert sorted(p.name for p in directory.iterdir()) == ["good.json", "good.tar.gz"]
        await vm.call("restore", "good")
        assert not await vm.call("exists", "sparse.img")
        assert await vm.call("read_file", "small.txt") == b"ok"


async def test_restore_brings_the_conversations_back_resumable(
    session_host: HostFactory, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.fallback = Turn.text("Noted.")
    async with session_host() as h:
        vm = h.client.vm.get_or_create(["ck-sessions"])
        first = (await vm.create_session("coding-agent"))["session_id"]
        await vm.send_prompt(first, "the codeword is MANGO")
        await vm.call("checkpoint", "talked")
        # After the checkpoint: the conversation goes on, another session opens.
        await vm.send_prompt(first, "the codeword is now LIME")
        await vm.create_session("coding-agent")

        await vm.call("restore", "talked")
        # Sessions running at restore time are closed; the one open at checkpoint
        # time comes back closed, with its conversation as it was then.
        assert {s["status"] for s in await vm.list_sessions()} == {"closed"}
        resumed = (await vm.resume_session(first))["session_id"]
        await vm.send_prompt(resumed, "what was the codeword?")
        seen = texts(fake_anthropic.message_requests()[-1])
        assert "MANGO" in seen and "LIME" not in seen

        # A fork gets the conversations too (its own logs start from the transcripts).
        await vm.call("fork", "ck-sessions-fork", {"checkpoint": "talked"})
        forked = h.client.vm.get(["ck-sessions-fork"])
        again = (await forked.resume_session(first))["session_id"]
        await forked.send_prompt(again, "and the codeword?")
        seen = texts(fake_anthropic.message_requests()[-1])
        assert "MANGO" in seen and "LIME" not in seen
