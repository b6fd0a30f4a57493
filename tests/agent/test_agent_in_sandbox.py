"""The coding agent inside a real sandbox (image bundles common + coding-agent), network
``none``, calling the fake model through the host's LLM gateway."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import acp
import docker
import pytest
from agent_helpers import ProcessTransport, RecordingClient

from host.gateway import LLMGateway
from host.sandbox import DockerBackend, Sandbox, SandboxLimits, SandboxSpec
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic, Turn, tool_use
from vm_images.agents import get_agent
from vm_images.builder import ensure_image

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
HOST_ID = f"a{os.getpid()}-{uuid.uuid4().hex[:6]}"
LIMITS = SandboxLimits(memory_mb=512, cpus=1.0, pids=128, tmp_mb=64)
REPO = "/home/user/repo"
BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    yield client
    leftovers, _ = remove_host(client, HOST_ID)
    client.close()
    assert not leftovers, f"tests left containers behind: {leftovers}"


@pytest.fixture(scope="module")
def agent_image(docker_engine: docker.DockerClient) -> str:
    return ensure_image(["common", *get_agent("coding-agent").bundles], client=docker_engine)


@pytest.fixture
async def sandbox(agent_image: str) -> AsyncIterator[Sandbox]:
    backend = await DockerBackend.connect(HOST_ID, connect_timeout=30.0)
    try:
        yield await backend.create(SandboxSpec(image=agent_image, key=["agent"], limits=LIMITS))
    finally:
        for info in await backend.list_sandboxes():
            await backend.remove(info.id)
        for volume in await backend.list_volumes():
            await backend.remove_volume(volume)
        await backend.close()


async def test_the_agent_fixes_a_bug_in_a_sandbox_through_the_gateway(
    sandbox: Sandbox, fake_anthropic: FakeAnthropic
) -> None:
    await sandbox.write_files(
        {
            f"{REPO}/calc.py": BUGGY,
            f"{REPO}/test_calc.py": "from calc import add\nassert add(2, 3) == 5\nprint('ok')\n",
        }
    )
    host_key = "sk-ant-host-" + secrets.token_hex(8)
    gateway = LLMGateway(api_key=host_key, upstream=fake_anthropic.url)
    await gateway.serve(sandbox.name, sandbox.control.control_dir, container=sandbox.id)

    read = tool_use("read", {"path": "calc.py"})
    edit = tool_use("edit", {"path": "calc.py", "old_string": "a - b", "new_string": "a + b"})
    run = tool_use("bash", {"command": "python3 test_calc.py"})
    found = tool_use("grep", {"pattern": "a \\+ b"})
    fake_anthropic.script(
        Turn([read]),
        Turn.tools(edit, say="Subtraction instead of addition."),
        Turn([run, found]),
        Turn.text("Fixed: ", "add now adds."),
    )
    client = RecordingClient()
    agent = get_agent("coding-agent")
    handle = await sandbox.spawn(
        list(agent.command), cwd=REPO, env={**agent.env, "AGENTVM_SESSION_ID": "host-sess-1"}
    )
    transport = ProcessTransport(handle)
    conn = acp.connect_to_agent(client, transport, use_unstable_protocol=True)
    try:
        init = await asyncio.wait_for(conn.initialize(protocol_version=acp.PROTOCOL_VERSION), 60)
        assert init.agent_info is not None and init.agent_info.name == "agentvm-coding-agent"
        session = await conn.new_session(cwd=REPO, agentvm={"permissionMode": "allow"})
        result = await asyncio.wait_for(
            conn.prompt(session_id=session.session_id, prompt=[acp.text_block("fix add")]), 120
        )
    except BaseException:
        print("agent stderr:", transport.stderr.decode(errors="replace"))
        raise
    finally:
        await conn.close()
        await handle.kill()
        await gateway.close()

    assert result.stop_reason == "end_turn", transport.stderr.decode(errors="replace")
    assert (await sandbox.read_file(f"{REPO}/calc.py")).decode() == FIXED
    assert client.text() == "Subtraction instead of addition.Fixed: add now adds."
    [diff] = client.tool_updates(edit.id)[-1].content
    assert (diff.type, diff.path, diff.old_text, diff.new_text) == (
        "diff",
        f"{REPO}/calc.py",
        BUGGY,
        FIXED,
    )
    ran = client.tool_updates(run.id)[-1]
    assert ran.status == "completed" and "ok" in ran.raw_output["output"]
    assert "calc.py:2:    return a + b" in client.tool_updates(found.id)[-1].raw_output["output"]

    # every model call went through the gateway: the host key was injected, the
    # placeholder never left, usage was booked to the session
    reqs = fake_anthropic.message_requests()
    assert len(reqs) == 4
    assert {r.api_key for r in reqs} == {host_key}
    assert all(r.body["stream"] is True for r in reqs)
    usage = gateway.usage(sandbox.name)
    assert usage.sessions["host-sess-1"].requests == 4
