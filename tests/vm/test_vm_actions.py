"""The vm actor's actions as a class (host/vm/actor.py: VmActions): every action is a
findable method, and a cancelled caller stops what its action started."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import eventually

from host.vm.actor import VmActions
from orchestrator.definitions import actions_of

pytestmark = pytest.mark.docker

ACTIONS = {
    "info", "start", "stop", "idle_stop", "exec", "spawn", "write_stdin", "close_stdin",
    "wait_process", "kill_process", "list_processes", "read_file", "write_file",
    "read_files", "write_files", "readdir", "readdir_recursive", "stat", "exists",
    "mkdir", "move", "delete_file", "upload_dir", "download_dir", "put_blob",
    "list_ports", "watch", "unwatch", "list_watches",
}  # fmt: skip


async def test_actions_are_methods(vm_host: Any) -> None:
    async with vm_host() as h:
        found = actions_of(VmActions(h.manager))
        assert set(found) == ACTIONS
        assert found["exec"].__name__ == "exec_" and found["exec"].__self__ is not None
        # The registered actor has them all (plus the session actions).
        definition = h.engine.registry.get("vm")
        assert definition is not None and ACTIONS <= set(definition.actions)


async def test_cancelled_exec_kills_its_process(vm_host: Any) -> None:
    """A run cancelled mid-step cancels its vm call: the command is killed."""
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["cancel-exec"])
        await vm.call("start")
        call = asyncio.create_task(vm.call("exec", "echo $$ > /tmp/exec.pid; exec sleep 300"))
        await eventually(lambda: vm.call("exists", "/tmp/exec.pid"), what="the command runs")
        pid = (await vm.call("read_file", "/tmp/exec.pid")).decode().strip()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await eventually(
            lambda: vm.call("exec", f"kill -0 {pid} 2>/dev/null"),
            lambda r: r["exit_code"] != 0,
            what=f"process {pid} killed",
        )
