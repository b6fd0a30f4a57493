"""File watches of a vm (supervisor watch.py, host/vm/actions_ports.py): real Docker,
real SQLite; changes arrive as ``file_changed`` broadcasts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from host.sandbox.ports import watch
from host.vm import actions_ports
from orchestrator.errors import AgentVMError, InvalidRequest
from tests.server.live import LiveServer
from tests.support import eventually

from .test_ports import KEY, TOKEN, live, live_host

# The live real host with a token (test_ports.py's fixtures: one host per module, the
# test's vm destroyed after it).
__all__ = ["live", "live_host"]

pytestmark = pytest.mark.docker


class Changes:
    """Collects a vm's ``file_changed`` events from a subscription."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.ended: list[dict[str, Any]] = []

    async def pump(self, subscription: Any) -> None:
        async for ev in subscription:
            if ev.name == "file_changed":
                self.items.append(ev.payload)
            elif ev.name == "watch_ended":
                self.ended.append(ev.payload)

    def of(self, watch_id: str) -> list[tuple[str, str]]:
        return [(e["kind"], e["path"]) for e in self.items if e["watch_id"] == watch_id]


async def _watching(vm: Any, path: str, **opts: Any) -> tuple[Changes, Any, asyncio.Task[None]]:
    changes = Changes()
    subscription = await vm.connect(["file_changed", "watch_ended"])
    task = asyncio.create_task(changes.pump(subscription))
    return changes, subscription, task


@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_create_modify_delete_in_order(vm_host: Any, mode: str) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create([f"watch-{mode}"])
        await vm.call("mkdir", "proj/sub")
        changes, subscription, pump = await _watching(vm, "proj")
        try:
            started = await vm.call("watch", "proj", {"mode": mode, "interval": 0.1})
            wid = started["watch_id"]
            assert started["mode"] == mode and started["path"] == "/home/user/proj"
            assert wid in await vm.call("list_watches")
            f = "/home/user/proj/sub/a.txt"
            steps = [
                ("created", "echo one > proj/sub/a.txt"),
                ("modified", "echo two >> proj/sub/a.txt"),
                ("deleted", "rm proj/sub/a.txt"),
            ]
            for kind, command in steps:
                assert (await vm.call("exec", command))["exit_code"] == 0
                await eventually(
                    lambda: asyncio.sleep(0, changes.of(wid)),
                    lambda got, k=kind: (k, f) in got,
                    what=f"{kind} event",
                )
            got = [c for c in changes.of(wid) if c[1] == f]
            kinds = [k for k, _ in got]
            # Polling may see the create and first write as one; order always holds.
            assert kinds.index("created") < kinds.index("modified") < kinds.index("deleted")
            # A directory created later is watched too (inotify adds it; polling walks it).
            await vm.call("exec", "mkdir proj/new && echo x > proj/new/b.txt")
            await eventually(
                lambda: asyncio.sleep(0, changes.of(wid)),
                lambda got: ("created", "/home/user/proj/new/b.txt") in got,
                what="a file in a new directory",
            )
            assert await vm.call("unwatch", wid) is True
            assert await vm.call("unwatch", wid) is False
            await eventually(lambda: asyncio.sleep(0, changes.ended), what="watch_ended")
            assert changes.ended[0] == {"watch_id": wid, "reason": "unwatched"}
            # A watch whose path goes away reports it and ends by itself.
            gone = (await vm.call("watch", "proj/new", {"mode": mode, "interval": 0.1}))["watch_id"]
            await vm.call("exec", "rm -rf proj/new")
            await eventually(
                lambda: asyncio.sleep(0, changes.ended), lambda e: len(e) == 2, what="end"
            )
            assert changes.ended[1] == {"watch_id": gone, "reason": "ended"}
            assert ("deleted", "/home/user/proj/new") in changes.of(gone)
            assert await vm.call("list_watches") == []
        finally:
            pump.cancel()
            await subscription.close()


async def test_bad_input_is_a_clear_error(vm_host: Any) -> None:
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["watch-bad"])
        with pytest.raises(AgentVMError) as missing:
            await vm.call("watch", "no/such/dir")
        assert missing.value.code == "file_not_found"
        with pytest.raises(InvalidRequest) as bad_mode:
            await vm.call("watch", ".", {"mode": "magic"})
        assert bad_mode.value.metadata["field"] == "mode"
        with pytest.raises(InvalidRequest) as bad_id:
            await vm.call("unwatch", 42)
        assert bad_id.value.metadata["field"] == "watch_id"
        assert await vm.call("list_watches") == []


async def test_a_flood_of_files_stays_bounded(vm_host: Any) -> None:
    """The attacker inside the vm creates 30 000 files while nobody reads the watch:
    the supervisor coalesces and drops (an ``overflow`` change), the host holds at
    most one channel window, and the stream still works afterwards."""
    async with vm_host() as h:
        vm = h.client.vm.get_or_create(["watch-flood"])
        await vm.call("mkdir", "flood")
        async with h.manager.sandbox_for(h.engine, ["watch-flood"]) as sandbox:
            started: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            stream = watch(sandbox, "flood", started=started)
            first = asyncio.ensure_future(stream.__anext__())
            await asyncio.wait({first, started}, return_when=asyncio.FIRST_COMPLETED)
            assert started.result()["mode"] == "inotify"
            # 30 000 changes of ~250 bytes each: more than the channel's 4 MiB window
            # and the supervisor's 1024 pending changes together.
            script = "for i in range(30000): open('flood/' + 'x' * 200 + str(i), 'w').close()"
            flood = ["python3", "-c", script]
            assert (await vm.call("exec", flood, {"timeout": 120}))["exit_code"] == 0
            batches = [await first]
            # Read until the watch has caught up: a new marker file before each read
            # (one made while the pending changes were full was dropped, as it should).
            marker = 0
            while not any(c.path.startswith("/home/user/flood/after") for c in batches[-1]):
                marker += 1
                await vm.call("exec", ["touch", f"/home/user/flood/after{marker}"])
                batches.append(await asyncio.wait_for(stream.__anext__(), 30))
            changes = [c for b in batches for c in b]
            overflow = [c for c in changes if c.kind == "overflow"]
            assert overflow and all(c.path == "/home/user/flood" for c in overflow)
            dropped = sum(c.dropped or 0 for c in overflow)
            created = [c for c in changes if c.kind == "created"]
            assert dropped > 0 and len(created) < 30000
            await stream.aclose()


def test_watch_over_sse(live: LiveServer) -> None:
    """``GET /vms/{key}/watch?path=``: a watch for as long as the client listens."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=120) as http:
        assert http.post(f"/actors/vm/{KEY}/actions/mkdir", json={"args": ["w"]}).is_success
        missing = http.get(f"/vms/{KEY}/watch", params={"path": "/home/user/nope"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
        typo = http.get(f"/vms/{KEY}/watch", params={"pth": "w"})
        assert typo.status_code == 400
        assert typo.json()["error"]["metadata"]["field"] == "query.pth"
        with http.stream("GET", f"/vms/{KEY}/watch", params={"path": "w"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines).startswith(": watching ")
            made = http.post(
                f"/actors/vm/{KEY}/actions/write_file", json={"args": ["w/new.txt", "x"]}
            )
            assert made.is_success
            event = data = None
            for line in lines:
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if data["path"] == "/home/user/w/new.txt":
                        break
            assert event == "file_changed" and data is not None
            assert data["kind"] in ("created", "modified") and data["watch_id"]
            # A file name that is not UTF-8 (the sandbox chose it) does not break
            # the stream: it arrives with a replacement character.
            odd = ["python3", "-c", "open(b'/home/user/w/odd\\xff.txt', 'w').close()"]
            made = http.post(f"/actors/vm/{KEY}/actions/exec", json={"args": [odd]})
            assert made.json()["output"]["exit_code"] == 0, made.text
            for line in lines:
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if data["path"].startswith("/home/user/w/odd"):
                        break
            assert data is not None and data["path"] == "/home/user/w/odd\ufffd.txt"
        # The client went away: the watch is stopped.
        deadline = time.monotonic() + 30
        while True:
            res = http.post(f"/actors/vm/{KEY}/actions/list_watches", json={"args": []})
            if res.json()["output"] == []:
                break
            assert time.monotonic() < deadline, res.text
            time.sleep(0.05)


async def test_a_sleeping_vm_stops_its_watches(vm_host: Any) -> None:
    """Nobody listens to a vm that went to sleep: its watches end with it."""
    async with vm_host(idle_timeout=1) as h:
        vm = h.client.vm.get_or_create(["watch-sleep"])
        wid = (await vm.call("watch", "."))["watch_id"]
        [task] = [t for w in actions_ports._watches.values() for i, t in w.items() if i == wid]
        await eventually(lambda: asyncio.sleep(0, task.done()), timeout=60, what="watch ended")
        # Stopped by the vm's on_sleep (cancelled), before its container was stopped.
        assert task.cancelled()
        assert await vm.call("list_watches") == []
