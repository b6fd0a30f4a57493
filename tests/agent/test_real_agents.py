"""The real agents (pi, Claude Code, OpenCode) as ACP bundles, end to end: a real
container carrying node and the three agents (one image, built once), the real LLM
gateway, the fake model as the only fake. The fake answers with each agent's own
shell and edit tools, named and shaped as that agent's request offers them
(``Turn.shell`` / ``Turn.edit``). Also: a fixBug run over HTTP with ``agent_type``
set to each, and the host's key nowhere in the sandbox while they run."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import httpx
import pytest

from host.gateway import LLMGateway
from host.sandbox import DockerBackend, Sandbox, SandboxLimits, SandboxSpec
from host.sessions import SessionManager
from tests.e2e.conftest import buggy_repo, e2e_images, fake_model, host, host_id  # noqa: F401
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic, Turn
from vm_images.agents import get_agent
from vm_images.builder import ensure_image

pytestmark = pytest.mark.docker

# One image for every real agent: one npm install per bundle (cached on the host),
# one build, shared by the session tests and the fixBug runs.
REAL_AGENTS = ("pi", "claude-code", "opencode")
# coding-agent too: tests/security/test_session_flood.py attacks pi in this same image.
REAL_BUNDLES = sorted(
    {"common", "coding-agent", *(b for a in REAL_AGENTS for b in get_agent(a).bundles)}
)
HOST_ID = f"r{os.getpid()}-{uuid.uuid4().hex[:6]}"
# Node agents take a few hundred MB each (docs/agents.md).
LIMITS = SandboxLimits(memory_mb=2048, cpus=1.0, pids=512, tmp_mb=256)
# Each agent's own shell and edit tool names, as its requests offer them.
SHELL_EDIT = {"pi": ("bash", "edit"), "claude-code": ("Bash", "Edit"), "opencode": ("bash", "edit")}
REPO = "/home/user/repo"
# A model pi knows (it falls back to its own default for one it does not).
MODEL = "claude-opus-4-5"
BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
WAIT_MS = 300_000

# Everything run as sandbox code: search every process's environ/cmdline and every file
# under /home/user and /tmp for the key (split so this script's cmdline lacks it).
KEY_SEARCH = """
import os, sys
key = (sys.argv[1] + sys.argv[2]).encode()
hits, read = [], 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    for name in ("environ", "cmdline"):
        try:
            data = open(f"/proc/{pid}/{name}", "rb").read()
        except OSError:
            continue
        read += 1
        if key in data:
            hits.append(f"/proc/{pid}/{name}")
files = 0
for root in ("/home/user", "/tmp"):
    for d, _, names in os.walk(root):
        for f in names:
            try:
                files += 1
                if key in open(os.path.join(d, f), "rb").read():
                    hits.append(os.path.join(d, f))
            except OSError:
                pass
print(read, files, hits)
"""


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    yield client
    leftovers, _ = remove_host(client, HOST_ID)
    client.close()
    assert not leftovers, f"tests left containers behind: {leftovers}"


@pytest.fixture(scope="module")
def real_image(docker_engine: docker.DockerClient) -> str:
    if shutil.which("npm") is None:  # the npm bundles are installed on the host
        pytest.skip("building the node agents' image needs npm on the host")
    return ensure_image(REAL_BUNDLES, client=docker_engine)


@pytest.fixture
async def sandbox(real_image: str) -> AsyncIterator[Sandbox]:
    backend = await DockerBackend.connect(HOST_ID, connect_timeout=30.0)
    try:
        yield await backend.create(SandboxSpec(image=real_image, key=["real"], limits=LIMITS))
    finally:
        for info in await backend.list_sandboxes():
            await backend.remove(info.id)
        for volume in await backend.list_volumes():
            await backend.remove_volume(volume)
        await backend.close()


async def assert_key_absent(sandbox: Sandbox, key: str) -> None:
    res = await sandbox.exec(["python3", "-c", KEY_SEARCH, key[:8], key[8:]])
    read, files, hits = res.stdout.split(" ", 2)
    assert int(read) >= 4 and int(files) >= 1, res.stdout  # it really looked
    assert hits.strip() == "[]", res.stdout


@pytest.mark.parametrize("agent_type", REAL_AGENTS)
async def test_real_agent_fixes_the_bug_with_its_own_tools(
    agent_type: str, sandbox: Sandbox, fake_anthropic: FakeAnthropic
) -> None:
    await sandbox.write_files(
        {
            f"{REPO}/calc.py": BUGGY,
            f"{REPO}/test_calc.py": "from calc import add\nassert add(2, 3) == 5\nprint('ok')\n",
        }
    )
    host_key = "sk-ant-host-" + secrets.token_hex(12)
    gateway = LLMGateway(api_key=host_key, upstream=fake_anthropic.url)
    await gateway.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)
    # Side calls without tools (opencode's title request) get a title, not a turn.
    fake_anthropic.untooled = Turn.text("Fix add")
    marker = f"[fix-{agent_type}]"
    fake_anthropic.script(
        Turn.read(f"{REPO}/calc.py"),
        Turn.edit(f"{REPO}/calc.py", "return a - b", "return a + b", say="It subtracts."),
        Turn.shell(f"cd {REPO} && python3 test_calc.py"),
        Turn.text("Fixed: add now adds."),
        marker=marker,
    )
    manager = SessionManager(sandbox, host_api_key=host_key, start_timeout=120)
    try:
        # As the seeds do: the host's key in env (replaced by the gateway placeholder).
        info = await manager.create_session(
            agent_type, env={"ANTHROPIC_API_KEY": host_key}, cwd="repo", model=MODEL
        )
        result = await asyncio.wait_for(
            manager.send_prompt(info.session_id, f"{marker} add(2, 3) returns -1; fix it"), 240
        )
        turns = [r for r in fake_anthropic.message_requests() if r.script is not None]
        detail = [(r.path, r.tool_names, r.turn and r.turn.error) for r in turns]
        assert result.stop_reason == "end_turn", (result, detail)
        assert len(turns) == 4, detail
        assert (await sandbox.read_file(f"{REPO}/calc.py")).decode() == FIXED, [
            r.tool_results() for r in turns
        ]
        # The session's model reaches pi (docs/agents.md: Claude Code and OpenCode
        # use their own default).
        if agent_type == "pi":
            assert {r.body.get("model") for r in turns} == {MODEL}, detail
        # The fake called the agent's own tools, by the names its request offered.
        shell, edit = SHELL_EDIT[agent_type]
        assert [b.name for t in turns[1:3] if t.turn for b in t.turn.blocks if b.name] == [
            edit,
            shell,
        ], detail
        # The agent ran its own tools: the shell's result carries the test's output.
        shell_id = turns[2].turn.tool_ids[0] if turns[2].turn else ""
        outcome = turns[3].tool_results()[shell_id]
        assert "ok" in str(outcome["content"]), outcome
        # Every model call went through the gateway with the host's key injected.
        assert {r.api_key for r in fake_anthropic.message_requests()} == {host_key}
        await assert_key_absent(sandbox, host_key)
        await manager.close_session(info.session_id)
    finally:
        await manager.close()
        await gateway.close()


# -- fixBug over HTTP ---------------------------------------------------------------


async def _send(http: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    resp = await http.post(
        "/actors/automator/main/queues/fixBug",
        json={"body": body, "wait": True, "timeout_ms": WAIT_MS},
    )
    assert resp.status_code == 200, resp.text
    out: dict[str, object] = resp.json()
    return out


# fixBug with agent_type set: one real agent in the default suite (each agent's own
# tools are the test above); the other two under -m slow.
@pytest.mark.parametrize(
    "agent_type",
    [a if a == "claude-code" else pytest.param(a, marks=pytest.mark.slow) for a in REAL_AGENTS],
)
async def test_fix_bug_run_with_a_real_agent(
    agent_type: str,
    real_image: str,
    host,  # noqa: F811
    fake_model: FakeAnthropic,  # noqa: F811
    buggy_repo: Path,  # noqa: F811
) -> None:
    """``fixBug`` with ``agent_type`` set: the vm's image carries the agent
    (AGENTVM_VM_BUNDLES), the agent fixes the bug with its own edit tool, the tests
    pass on the first attempt."""
    server = host(
        AGENTVM_REPO_ROOTS=str(buggy_repo.parent),
        AGENTVM_VM_BUNDLES=json.dumps(REAL_BUNDLES),
    )
    fake_model.untooled = Turn.text("Fix add")
    marker = f"real-{agent_type}"
    fake_model.script(
        Turn.read("/home/user/repo/calc.py"),
        Turn.edit("/home/user/repo/calc.py", "return a - b", "return a + b"),
        Turn.text("Fixed."),
        marker=marker,
    )
    body = {
        "repo": str(buggy_repo),
        "issue": f"{marker}: add(2, 3) returns -1",
        "test_command": "sh test_calc.sh",
        "agent_type": agent_type,
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        done = await _send(http, body)
    assert done["status"] == "completed", done
    result = done["response"]
    assert isinstance(result, dict)
    assert result["fixed"] is True and result["attempts"] == 1, result
    assert result["tests_exit_code"] == 0, result.get("test_output")
    assert result["summary"] == "Fixed."
