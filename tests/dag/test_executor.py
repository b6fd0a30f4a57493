"""The DAG executor end to end: the ``workflows`` actor of a live host (a subprocess),
driven through the Python client over HTTP; real Docker vms with the coding agent;
the scripted fake model upstream (the one faked part), routed per step by a marker
in each step's prompt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from orchestrator.dag import workflow_view
from orchestrator.errors import InvalidRequest
from orchestrator.remote import RemoteClient, create_client
from tests.e2e.conftest import e2e_images, fake_model, host, host_id  # noqa: F401
from tests.server.live import LiveServer
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn, _prompt_text

pytestmark = pytest.mark.docker

WAIT_S = 300.0
FAILING = Turn.fail(400, "invalid_request_error", "upstream refuses")


@asynccontextmanager
async def _client(server: LiveServer) -> AsyncIterator[RemoteClient]:
    client = create_client(server.url, upload_repos=False)
    try:
        yield client
    finally:
        await client.aclose()


def _first_prompts(fake: FakeAnthropic, marker: str) -> list[str]:
    """The prompt text of every first request of a turn that names ``marker``."""
    out = []
    for r in fake.message_requests():
        msgs = r.messages
        if len(msgs) == 1 and marker in _prompt_text(r.body):
            out.append(_prompt_text(r.body))
    return out


async def _view(client: RemoteClient, name: str, run_id: int) -> dict[str, Any]:
    return workflow_view(await client.workflows.get_or_create([name]).run(run_id))


async def _until(
    client: RemoteClient, name: str, run_id: int, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    return await eventually(
        lambda: _view(client, name, run_id), check, timeout=WAIT_S, interval=0.2, what="run"
    )


def _ended(view: dict[str, Any]) -> bool:
    return view["status"] in ("completed", "partial", "failed", "cancelled")


async def _vm_keys(client: RemoteClient) -> set[str]:
    return {a.key[0] for a in await client.vm.list()}


DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "params": [
        {"name": "topic", "required": True},
        {"name": "depth", "type": "number", "default": 2},
        {"name": "extra", "type": "boolean", "default": False},
    ],
    "steps": [
        {"id": "a", "prompt": "[step a] write about {{params.topic}} at {{params.depth}}"},
        {"id": "b", "prompt": "[step b] left of {{steps.a.text}}", "depends_on": ["a"]},
        {"id": "c", "prompt": "[step c] right", "depends_on": ["a"]},
        {
            "id": "d",
            "prompt": "[step d] {{steps.b.text}} + {{steps.c.text}} + "
            "file={{steps.a.files.out.txt}}",
            "depends_on": ["b", "c"],
        },
        {
            "id": "e",
            "prompt": "[step e] only with extra",
            "depends_on": ["a"],
            "when": {"param": "extra"},
        },
    ],
}


async def test_diamond_runs_its_middle_steps_side_by_side_and_interpolates(
    host,  # noqa: F811
    fake_model: FakeAnthropic,  # noqa: F811
) -> None:
    """The registry versions a definition; bad params are refused at send time naming
    the param; a diamond's two middle steps overlap (each one's model turn is held
    until both asked); later prompts carry earlier steps' text and a file a step left
    in the vm; a ``when`` that is false skips its step."""
    server = host()
    gate = fake_model.gate()
    fake_model.script(
        Turn.tool("bash", {"command": "printf 'from-a-file' > out.txt"}),
        Turn.text("A-TEXT"),
        marker="[step a]",
    )
    fake_model.script(Turn.text("B-TEXT", wait_for=gate), marker="[step b]")
    fake_model.script(Turn.text("C-TEXT", wait_for=gate), marker="[step c]")
    fake_model.script(Turn.text("D-TEXT"), marker="[step d]")
    async with _client(server) as client:
        wf = client.workflows.get_or_create(["diamond"])
        put = await wf.put_definition(DIAMOND)
        assert put == {"name": "diamond", "version": 1, "created": True}
        again = await wf.put_definition(DIAMOND)
        assert again == {"name": "diamond", "version": 1, "created": False}
        changed = {**DIAMOND, "description": "v2", "version": 5}
        assert (await wf.put_definition(changed))["version"] == 5
        assert [v["version"] for v in await wf.versions()] == [1, 5]
        assert (await wf.get_definition(1))["description"] == ""
        assert (await wf.summary())["latest"] == 5
        with pytest.raises(InvalidRequest) as bad:
            await wf.send("run", {"definition": DIAMOND, "params": {"depth": 3}})
        assert bad.value.metadata["field"] == "body.params.topic", bad.value.metadata
        with pytest.raises(InvalidRequest) as typed:
            await wf.send("run", {"definition": DIAMOND, "params": {"topic": "x", "depth": "3"}})
        assert typed.value.metadata["field"] == "body.params.depth"
        broken = {**DIAMOND, "steps": [{"id": "a", "prompt": "{{steps.zz.text}}"}]}
        with pytest.raises(InvalidRequest) as bad_def:
            await wf.send("run", {"definition": broken, "params": {"topic": "x"}})
        assert bad_def.value.metadata["field"] == "body.definition.steps.0.prompt"

        sent = await wf.send("run", {"definition": DIAMOND, "params": {"topic": "owls"}})
        run_id = sent.message_id
        assert run_id is not None
        # b and c can only both ask the model if they run side by side.
        await eventually(
            lambda: asyncio.sleep(0, [_first_prompts(fake_model, f"[step {s}]") for s in "bc"]),
            lambda got: all(got),
            timeout=WAIT_S,
            interval=0.2,
            what="b and c prompting",
        )
        gate.set()
        view = await _until(client, "diamond", run_id, _ended)
        assert view["status"] == "completed", view
        keys_after = await _vm_keys(client)
    steps = view["steps"]
    assert [steps[s]["status"] for s in "abcde"] == ["completed"] * 4 + ["skipped"]
    assert steps["e"]["reason"] == "condition"
    b, c = steps["b"], steps["c"]
    assert b["started_at"] < c["finished_at"] and c["started_at"] < b["finished_at"], (b, c)
    assert steps["d"]["text"] == "D-TEXT"
    assert view["params"] == {"topic": "owls", "depth": 2, "extra": False}
    assert view["order"] == list("abcde")
    (a_prompt,) = _first_prompts(fake_model, "[step a]")
    assert "write about owls at 2" in a_prompt
    assert "left of A-TEXT" in _first_prompts(fake_model, "[step b]")[0]
    (d_prompt,) = _first_prompts(fake_model, "[step d]")
    assert "B-TEXT + C-TEXT + file=from-a-file" in d_prompt
    assert _first_prompts(fake_model, "[step e]") == []
    # One shared vm, destroyed at the end of a completed run.
    assert set(view["vms"].values()) == {f"wf-diamond-{run_id}"}
    assert f"wf-diamond-{run_id}" not in keys_after
