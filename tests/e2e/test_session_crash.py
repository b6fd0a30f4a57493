"""A vm's agent session across a ``kill -9`` of the whole server with a model call in
flight (issue 9, section 6), black-box: a real server process, a real container with
the coding agent, the fake model (held mid-answer) as the gateway's upstream."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from orchestrator import create_client
from tests.server.live import LiveServer
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn

pytestmark = pytest.mark.docker

FIX = {"command": "mkdir -p /home/user/work && echo fixed > /home/user/work/fix.txt"}


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children of children too)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_9_everything(server: LiveServer) -> None:
    """``kill -9`` of the server and every process it started (its whole group: the
    server shares the test's group, so the group is taken as the process tree)."""
    victims = [server.proc.pid, *_descendants(server.proc.pid)]
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)  # nobody gets to clean up after the first dies
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    server.proc.wait(timeout=30)


def _log(server: LiveServer) -> str:
    lines = []
    while not server.lines.empty():
        lines.append(server.lines.get_nowait())
    return "".join(lines)


async def test_a_session_survives_kill_9_of_the_server_with_a_model_call_in_flight(
    host: Any, fake_model: FakeAnthropic
) -> None:
    cut = fake_model.gate()  # the answer the kill cuts never comes on that connection
    fake_model.script(Turn.text("Looking at it", wait_for=cut), marker="[crash]")
    fake_model.script(Turn.tool("bash", FIX, say="Fixing."), Turn.text("Fixed."), marker="[crash]")
    server = host()
    vm = create_client(server.url).vm.get_or_create("sess-crash")
    sid = (await vm.create_session("coding-agent", cwd="work"))["session_id"]
    prompt = asyncio.create_task(vm.send_prompt(sid, "[crash] write the fix"))

    async def events(handle: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await handle.get_session_events(sid)
        return result

    # The model is mid-answer (its first delta is out, the rest held back).
    before = await eventually(
        lambda: events(vm),
        lambda evs: "Looking at it" in str(evs),
        timeout=120,
        what="the model's first delta",
    )
    assert before[0]["kind"] == "prompt"
    assert not any(e["kind"] == "prompt_end" for e in before)

    kill_9_everything(server)
    with pytest.raises(Exception):  # noqa: B017 (the HTTP call dies with the server)
        await prompt

    server = host()
    # Nobody touches the vm: the start-up re-attach serves its gateway again, the
    # agent's retried model call gets through and the turn goes on by itself.
    try:
        await asyncio.to_thread(fake_model.wait_for_requests, 3, 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; server log:\n{_log(server)}") from None
    vm = create_client(server.url).vm.get("sess-crash")
    after = await eventually(
        lambda: events(vm),
        lambda evs: evs[-1]["kind"] == "prompt_end",
        timeout=120,
        interval=0.2,
        what="the prompt_end after the restart",
    )
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1)), "events not contiguous"
    assert after[: len(before)] == before
    assert after[-1]["data"]["stop_reason"] == "end_turn"
    assert [e["kind"] for e in after].count("prompt") == 1
    assert await vm.read_file("/home/user/work/fix.txt") == b"fixed\n"
    log = _log(server)
    assert "already has a listener" not in log, log

    # The session takes another prompt on the new server.
    fake_model.script(Turn.text("Still here."), marker="[after]")
    again = await vm.send_prompt(sid, "[after] are you there?")
    assert again["stop_reason"] == "end_turn" and again["text"] == "Still here."
    cut.set()
    await vm.close_session(sid)
    await vm.destroy()
