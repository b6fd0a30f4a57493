"""Part F attacks: sandbox code writing into an agent's pipes, and an agent flooding
the host with session events. Real Docker, a real engine (SQLite), the bundled
coding agent and the LLM gateway; the fake model is the only fake."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import pytest

from host.gateway import LLMGateway
from host.sandbox import SandboxLimits
from host.vm import SandboxManager, VmOptions, vm_actor
from orchestrator import Client, setup
from tests.support import eventually
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.builder import ensure_image

pytestmark = pytest.mark.docker

HOST_ID = f"flood{os.getpid()}"
HOST_KEY = "sk-ant-flood-test-host-key"
BUNDLES = ["common", "coding-agent"]
REAL_BUNDLES = ["claude-code", "coding-agent", "common", "node", "opencode", "pi"]
LIMITS = SandboxLimits(memory_mb=1024, cpus=1.0, pids=256, tmp_mb=64)
FLOOD_AGENT_PATH = "/home/user/flood_agent.py"
MiB = 2**20

# Run inside the sandbox (as the sandbox user, like any agent-run command): open the
# agent's stdio pipes through /proc, its memory, ptrace it, steal its fds with
# pidfd_getfd. A plain python process started here is attacked the same way first,
# to show the attack works on anything that is not protected.
ATTACK = r"""
import ctypes, errno, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
FORGED = (json.dumps({"jsonrpc": "2.0", "method": "session/update", "params": {
    "sessionId": "x", "update": {"sessionUpdate": "agent_message_chunk",
    "content": {"type": "text", "text": "FORGED-BY-SANDBOX-CODE"}}}}) + "\n").encode()

def attack(pid):
    out = {}
    for name, path, mode in (("stdout", f"/proc/{pid}/fd/1", "wb"),
                             ("stdin", f"/proc/{pid}/fd/0", "wb"),
                             ("mem", f"/proc/{pid}/mem", "r+b")):
        try:
            with open(path, mode, buffering=0) as fh:
                if name != "mem":
                    fh.write(FORGED)
            out[name] = "opened"
        except OSError as exc:
            out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        out["pidfd_getfd"] = errno.errorcode.get(ctypes.get_errno(), "?")
    else:
        fd = libc.syscall(438, pidfd, 1, 0)  # pidfd_getfd(pidfd, 1)
        out["pidfd_getfd"] = "stolen" if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        out["ptrace"] = "attached"
        libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
    else:
        out["ptrace"] = errno.errorcode.get(ctypes.get_errno(), "?")
    return out

def children(pid):
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(p))
    return out

control = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
agent_pid = int(sys.argv[1])
result = {"control": attack(control.pid), "agent": attack(agent_pid),
          "children": [attack(c) for c in children(agent_pid)]}
control.kill()
print(json.dumps(result))
"""

# A hostile "agent": answers initialize / session/new, then on a prompt writes as
# fast as it can (stdlib only). Prompts: "flood <lines> <pad>" forged
# session/update lines, "long <bytes>" one line without a newline for that long.
FLOOD_AGENT = r"""
import json, sys
out = sys.stdout.buffer
def send(obj):
    out.write(json.dumps(obj).encode() + b"\n"); out.flush()
for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": 1,
              "agentCapabilities": {}, "authMethods": []}})
    elif method == "session/new":
        send({"jsonrpc": "2.0", "id": mid, "result": {"sessionId": "flood-1"}})
    elif method == "session/prompt":
        cmd, *args = msg["params"]["prompt"][0]["text"].split()
        if cmd == "flood":
            lines, pad = int(args[0]), "x" * int(args[1])
            batch = b"".join(
                json.dumps({"jsonrpc": "2.0", "method": "session/update", "params": {
                    "sessionId": "flood-1", "update": {"sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": f"{pad} {i}"}}}}).encode() + b"\n"
                for i in range(100))
            for _ in range(lines // 100):
                out.write(batch)
            out.flush()
        elif cmd == "long":
            out.write(b'{"jsonrpc":"2.0","method":"session/update","params":{"x":"'
                      + b"y" * int(args[0]) + b'"}}\n')
            out.flush()
        send({"jsonrpc": "2.0", "id": mid, "result": {"stopReason": "end_turn"}})
"""


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    yield client
    containers, volumes = remove_host(client, HOST_ID)
    client.close()
    assert not containers and not volumes, f"left behind: {containers} {volumes}"


@pytest.fixture(scope="module")
def agent_image(docker_engine: docker.DockerClient) -> str:
    return ensure_image(BUNDLES, client=docker_engine)


@pytest.fixture(autouse=True)
def clean_host(docker_engine: docker.DockerClient, agent_image: str) -> Iterator[None]:
    yield
    remove_host(docker_engine, HOST_ID)


@asynccontextmanager
async def vm_host(
    make_engine: Callable[..., Any], fake_anthropic: FakeAnthropic
) -> AsyncIterator[Client]:
    gateway = LLMGateway(api_key=HOST_KEY, upstream=fake_anthropic.url)
    defaults = VmOptions(bundles=BUNDLES, limits=LIMITS)
    manager = await SandboxManager.open(
        host_id=HOST_ID, pool_size=0, defaults=defaults, reap_interval=None, gateway=gateway
    )
    try:
        async with make_engine(setup(use={"vm": vm_actor(manager)})) as engine:
            manager.attach(engine)
            yield engine.client()
    finally:
        await manager.close()
        await gateway.close()


async def all_events(vm: Any, sid: str) -> list[dict[str, Any]]:
    """Every stored event, paging as a client must (answers are bounded)."""
    out: list[dict[str, Any]] = []
    while True:
        page: list[dict[str, Any]] = await vm.get_session_events(
            sid, since=out[-1]["seq"] if out else 0, limit=10000
        )
        if not page:
            return out
        out += page


def db_bytes(db_path: str) -> int:
    """The database's size on disk (its write-ahead log included)."""
    return sum(os.path.getsize(p) for p in (db_path, db_path + "-wal") if os.path.exists(p))


# pi: node-based (execute-only agentvm-node), and pi-acp's pi child process too.
@pytest.mark.parametrize("agent_type", ["coding-agent", "pi"])
async def test_sandbox_code_cannot_write_into_or_trace_the_agent(
    agent_type: str,
    make_engine: Callable[..., Any],
    fake_anthropic: FakeAnthropic,
    agent_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTVM_PRESTART_AGENTS", "")  # the agent gets spawned for us
    fake_anthropic.script(Turn.text("still", " me"), marker="[after]")
    # For pi, the image of tests/agent/test_real_agents.py (one image for all of them).
    bundles = REAL_BUNDLES if agent_type != "coding-agent" else BUNDLES
    async with vm_host(make_engine, fake_anthropic) as client:
        vm = client.vm.get_or_create(["flood", "pipes", agent_type], input={"bundles": bundles})
        sid = (await vm.create_session(agent_type))["session_id"]
        pid = next(s["pid"] for s in await vm.list_sessions() if s["session_id"] == sid)
        res = await vm.exec(["python3", "-c", ATTACK, str(pid)], timeout=60)
        assert res["exit_code"] == 0, res
        found = json.loads(res["stdout"])
        # The same attack works on an unprotected process of the sandbox user ...
        assert found["control"]["stdout"] == "opened", found
        assert found["control"]["ptrace"] == "attached", found
        # ... and on none of the agent's ways in.
        agent = found["agent"]
        assert agent["stdout"] in ("EACCES", "EPERM"), agent
        assert agent["stdin"] in ("EACCES", "EPERM"), agent
        assert agent["mem"] in ("EACCES", "EPERM"), agent
        assert agent["pidfd_getfd"] in ("EPERM", "EACCES"), agent
        assert agent["ptrace"] == "EPERM", agent
        for child in found["children"]:  # pi-acp's pi
            assert child["stdin"] in ("EACCES", "EPERM") and child["ptrace"] == "EPERM", found
        if agent_type == "pi":
            assert found["children"], found
        # The session still works, and nothing forged reached its events.
        answer = await vm.send_prompt(sid, "[after] who is there")
        assert answer["text"] == "still me"
        events = await all_events(vm, sid)
        assert "FORGED-BY-SANDBOX-CODE" not in json.dumps(events)
        await vm.close_session(sid)
        await vm.destroy()


async def test_a_flooding_agent_cannot_grow_the_database_or_stall_the_host(
    make_engine: Callable[..., Any],
    fake_anthropic: FakeAnthropic,
    agent_image: str,
    db_path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cap = 1 * MiB
    config = tmp_path / "agents.toml"
    config.write_text(f'[agents.flood]\ncommand = ["python3", "{FLOOD_AGENT_PATH}"]\n')
    monkeypatch.setenv("AGENTVM_AGENTS", str(config))
    monkeypatch.setenv("AGENTVM_PRESTART_AGENTS", "")
    monkeypatch.setenv("AGENTVM_SESSION_EVENTS_MAX_BYTES", str(cap))
    monkeypatch.setenv("AGENTVM_SESSION_EVENTS_PER_SECOND", "20")
    monkeypatch.setenv("AGENTVM_SESSION_LINE_MAX_BYTES", str(256 * 1024))
    async with vm_host(make_engine, fake_anthropic) as client:
        vm = client.vm.get_or_create(["flood", "events"])
        await vm.write_file(FLOOD_AGENT_PATH, FLOOD_AGENT)
        sid = (await vm.create_session("flood"))["session_id"]

        # 1. A line longer than the limit is dropped with one protocol_error event.
        await vm.send_prompt(sid, f"long {1 * MiB}")
        events = await all_events(vm, sid)
        errors = [e["data"] for e in events if e["kind"] == "protocol_error"]
        assert len(errors) == 1 and errors[0]["error"] == "line_too_long", errors
        assert errors[0]["bytes"] > MiB and errors[0]["limit"] == 256 * 1024

        # 2. 30 000 forged updates (~300 bytes each, ~10 MB) as fast as the agent can
        # write; meanwhile the host answers other calls on the same vm.
        written = 30_000
        prompt = asyncio.create_task(vm.send_prompt(sid, f"flood {written} 200"))
        await eventually(lambda: all_events(vm, sid), lambda evs: len(evs) > 50, timeout=60)
        listed = await vm.list_sessions()
        assert [s["session_id"] for s in listed] == [sid]
        assert (await vm.exec("echo alive"))["stdout"] == "alive\n"
        result = await asyncio.wait_for(prompt, 120)
        assert result["stop_reason"] == "end_turn"
        events = await all_events(vm, sid)
        updates = [e for e in events if e["kind"] == "update"]
        dropped = [e["data"] for e in events if e["kind"] == "events_dropped"]
        assert 0 < len(updates) < written
        assert dropped and all(d["reason"] == "rate_limit" for d in dropped), dropped
        assert len(updates) + sum(d["count"] for d in dropped) >= written

        # 3. 200 KB lines (~20 MB a prompt) fill the session's store limit (as fast as
        # the rate limit lets them): past it nothing more is stored but the final
        # events, which end with the drop count.
        async def flood_big() -> list[dict[str, Any]]:
            await vm.send_prompt(sid, "flood 100 200000")
            return await all_events(vm, sid)

        await eventually(
            flood_big,
            lambda evs: any(e["data"].get("reason") == "store_full" for e in evs),
            timeout=120,
            what="the store limit",
        )
        await vm.close_session(sid)
        events = await all_events(vm, sid)
        assert [e["kind"] for e in events[-2:]] == ["events_dropped", "session_closed"]
        assert events[-1]["data"]["exit_code"] is not None
        full = [e["data"] for e in events if e["kind"] == "events_dropped"][-2:]
        assert full[0]["reason"] == "store_full" and full[0]["limit_bytes"] == cap
        stored = sum(len(json.dumps(e, separators=(",", ":"))) for e in events)
        assert stored < cap + 64 * 1024, stored
        await vm.destroy()
    # The database holds about the stored events, not the ~30 MB the agent wrote.
    assert db_bytes(db_path) < 3 * cap, db_bytes(db_path)
