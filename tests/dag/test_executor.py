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
from tests.e2e.conftest import (  # noqa: F401
    buggy_repo,
    e2e_images,
    host_id,
    module_hosts,
    module_model,
    own_host,
    shared_host,
    shared_model,
)
from tests.server.live import LiveServer
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn, _prompt_text

pytestmark = pytest.mark.docker

WAIT_S = 300.0


# One live host for the module's tests (each uses workflow names and markers of its
# own); the kill -9 test has one of its own (``own_host``).
@pytest.fixture
def host(shared_host: Callable[..., LiveServer]) -> Callable[..., LiveServer]:  # noqa: F811
    return shared_host


@pytest.fixture
def fake_model(shared_model: FakeAnthropic) -> FakeAnthropic:  # noqa: F811
    return shared_model


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
    host,
    fake_model: FakeAnthropic,
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

        stream = await wf.connect()
        got: list[tuple[str, Any]] = []

        async def collect() -> None:
            async for ev in stream:
                got.append((ev.name, ev.payload))
                if ev.name == "workflow_completed":
                    return

        collector = asyncio.create_task(collect())
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
        await asyncio.wait_for(collector, 60)
        await stream.close()
    ours = ("workflow_started", "step_started", "step_completed", "step_skipped")
    mine = [
        (n, p)
        for n, p in got
        if n in (*ours, "workflow_completed") and isinstance(p, dict) and p["run_id"] == run_id
    ]
    names = [n for n, _ in mine]
    assert names[0] == "workflow_started" and names[-1] == "workflow_completed", names
    assert mine[0][1]["steps"] == list("abcde") and mine[0][1]["params"]["topic"] == "owls"
    done = {p["step"]: p["text"] for n, p in mine if n == "step_completed"}
    assert done == {"a": "A-TEXT", "b": "B-TEXT", "c": "C-TEXT", "d": "D-TEXT"}, mine
    assert {p["step"] for n, p in mine if n == "step_started"} == set("abcd")
    assert [p for n, p in mine if n == "step_skipped"] == [
        {"run_id": run_id, "step": "e", "reason": "condition"}
    ]
    assert mine[-1][1]["status"] == "completed"
    assert mine[-1][1]["steps"] == {**dict.fromkeys("abcd", "completed"), "e": "skipped"}
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


FAILS: dict[str, Any] = {
    "name": "fails",
    "steps": [
        {"id": "a", "prompt": "[f a] set up", "checkpoint": True},
        {
            "id": "b",
            "prompt": "[f b] work",
            "depends_on": ["a"],
            "check": "grep -q clean state.txt",
        },
        {"id": "c", "prompt": "[f c] after {{steps.b.text}}", "depends_on": ["b"]},
        {"id": "x", "prompt": "[f x] flaky", "vm": "side", "retries": 1},
        {
            "id": "y",
            "prompt": "[f y] breaks",
            "vm": "side",
            "depends_on": ["x"],
            "continue_on_failure": True,
        },
        {"id": "z", "prompt": "[f z] after y", "vm": "side", "depends_on": ["y"]},
        {"id": "p", "prompt": "[f p] v1", "vm": "late", "checkpoint": True},
        {"id": "q", "prompt": "[f q] v2", "vm": "late", "depends_on": ["p"]},
        {
            "id": "r",
            "prompt": "[f r] flaky",
            "vm": "late",
            "depends_on": ["q"],
            "retries": 1,
            "check": "grep -q v2 f.txt",
        },
    ],
}


async def test_failures_skip_dependents_and_a_retry_restarts_from_the_checkpoint(
    host,
    fake_model: FakeAnthropic,
) -> None:
    """b dirties the workspace and its check fails: c is skipped and the run ends
    ``partial``; x fails once and its retry passes; y fails but continues, so z runs;
    r's retry finds q completed on its vm after p's checkpoint, so there is no restore.
    Retrying the run keeps the completed steps, restores b's vm to a's checkpoint
    before b runs again (its check now passes), and runs c."""
    server = host()
    fake_model.script(
        Turn.tool("bash", {"command": "echo clean > state.txt"}), Turn.text("A"), marker="[f a]"
    )
    fake_model.script(
        Turn.tool("bash", {"command": "echo dirty > state.txt"}), Turn.text("B1"), marker="[f b]"
    )
    fake_model.script(FAILING, Turn.text("X"), marker="[f x]")
    fake_model.script(FAILING, marker="[f y]")
    fake_model.script(Turn.text("Z"), marker="[f z]")
    fake_model.script(
        Turn.tool("bash", {"command": "echo v1 > f.txt"}), Turn.text("P"), marker="[f p]"
    )
    fake_model.script(
        Turn.tool("bash", {"command": "echo v2 > f.txt"}), Turn.text("Q"), marker="[f q]"
    )
    fake_model.script(FAILING, Turn.text("R"), marker="[f r]")
    async with _client(server) as client:
        wf = client.workflows.get_or_create(["fails"])
        sent = await wf.send("run", {"definition": FAILS}, wait=True, timeout=WAIT_S)
        assert sent.status == "failed", sent
        assert sent.error is not None
        assert (sent.error["group"], sent.error["code"]) == ("workflow", "partial"), sent.error
        assert sorted(sent.error["metadata"]["failed"]) == ["b", "y"]
        run_id = sent.message_id
        assert run_id is not None
        first = await _view(client, "fails", run_id)
        assert first["status"] == "partial"
        steps = first["steps"]
        status = {k: v["status"] for k, v in steps.items()}
        assert status == {
            "a": "completed",
            "b": "failed",
            "c": "skipped",
            "x": "completed",
            "y": "failed",
            "z": "completed",
            "p": "completed",
            "q": "completed",
            "r": "completed",
        }, steps
        # r ran again after a failed attempt, but q completed on its vm after p's
        # checkpoint: no restore (q's v2 stays, r's check sees it).
        assert steps["r"]["attempts"] == 2 and "restored_from" not in steps["r"], steps["r"]
        assert steps["r"]["check"]["exit_code"] == 0
        assert steps["c"]["reason"] == "dependency_failed" and steps["c"]["dependency"] == "b"
        assert steps["b"]["check"]["exit_code"] == 1, steps["b"]
        assert steps["b"]["error"]["metadata"]["check_exit_code"] == 1
        assert steps["y"]["error"]["metadata"]["stop_reason"] == "error", steps["y"]
        assert steps["x"]["attempts"] == 2
        assert steps["a"]["checkpoint"] == f"wf-{run_id}-a"
        assert steps["z"]["vm"] == steps["x"]["vm"] == f"wf-fails-{run_id}-side"
        # Kept for inspection and a retry (keep_vm on_failure).
        assert set(first["vms"].values()) <= await _vm_keys(client)

        fake_model.script(Turn.text("B2"), marker="[f b]")
        fake_model.script(Turn.text("Y"), marker="[f y]")
        fake_model.script(Turn.text("C"), marker="[f c]")
        await wf.retry_run(run_id)
        view = await _until(client, "fails", run_id, _ended)
        assert view["status"] == "completed", view
        left = await _vm_keys(client)
    after = view["steps"]
    assert {k: v["status"] for k, v in after.items()} == dict.fromkeys("abcxyzpqr", "completed")
    assert after["b"]["restored_from"] == f"wf-{run_id}-a"
    assert after["b"]["check"]["exit_code"] == 0
    assert "restored_from" not in after["y"]  # its vm has no checkpoint
    for sid in ("a", "x", "z", "p", "q", "r"):  # kept: the same records
        assert after[sid]["finished_at"] == steps[sid]["finished_at"], sid
    counts = {s: len(_first_prompts(fake_model, f"[f {s}]")) for s in "abcxyzpqr"}
    assert counts == {"a": 1, "b": 2, "c": 1, "x": 2, "y": 2, "z": 1, "p": 1, "q": 1, "r": 2}
    assert "after B2" in _first_prompts(fake_model, "[f c]")[0]
    assert not set(view["vms"].values()) & left  # destroyed once the run completed


RACE: dict[str, Any] = {
    "name": "race",
    "steps": [
        {"id": "prep", "prompt": "[r prep] make the base"},
        {
            "id": "r",
            "prompt": "[r cand] unused",
            "depends_on": ["prep"],
            "check": "test -f won.txt && test -f base.txt",
            "race": [{"prompt": "[r c0] try"}, {"prompt": "[r c1] try"}, {"prompt": "[r c2] try"}],
        },
        {
            "id": "after",
            "prompt": "[r after] go on",
            "depends_on": ["r"],
            "check": "test -f won.txt",
        },
    ],
}


async def test_a_race_step_keeps_the_candidate_whose_check_passes(
    host,
    fake_model: FakeAnthropic,
) -> None:
    """Three candidates, each in a fork of the step's vm (they all see base.txt); only
    c1 leaves won.txt, so only its check passes: it wins, the others' vms are
    destroyed, and the next step runs in the winner's vm."""
    server = host()
    fake_model.script(
        Turn.tool("bash", {"command": "echo base > base.txt"}), Turn.text("P"), marker="[r prep]"
    )
    fake_model.script(Turn.text("nothing here"), marker="[r c0]")
    fake_model.script(
        Turn.tool("bash", {"command": "touch won.txt"}), Turn.text("I won"), marker="[r c1]"
    )
    fake_model.script(Turn.text("nor here"), marker="[r c2]")
    fake_model.script(Turn.text("after"), marker="[r after]")
    async with _client(server) as client:
        wf = client.workflows.get_or_create(["race"])
        sent = await wf.send(
            "run", {"definition": RACE, "keep_vm": "always"}, wait=True, timeout=WAIT_S
        )
        assert sent.status == "completed", sent
        run_id = sent.message_id
        assert run_id is not None
        view = await _view(client, "race", run_id)
        keys = await _vm_keys(client)
    r = view["steps"]["r"]
    prefix = f"wf-race-{run_id}"
    assert r["winner"] == 1 and r["text"] == "I won", r
    assert r["vm"] == f"{prefix}-r-c1"
    assert {c["index"]: c["status"] for c in r["candidates"]}[1] == "won"
    assert all(c["status"] in ("failed", "cancelled") for c in r["candidates"] if c["index"] != 1)
    assert view["steps"]["after"]["vm"] == f"{prefix}-r-c1"
    assert view["steps"]["after"]["check"]["exit_code"] == 0
    # The losers' vms are gone; the winner's and the base vm were kept (keep_vm always).
    assert f"{prefix}-r-c0" not in keys and f"{prefix}-r-c2" not in keys
    assert {prefix, f"{prefix}-r-c1"} <= keys


CANCEL: dict[str, Any] = {
    "name": "cancel",
    "max_concurrency": 1,
    "steps": [
        {"id": "slow", "prompt": "[k slow] hold on"},
        {"id": "other", "prompt": "[k other] waits for a slot"},
        {"id": "next", "prompt": "[k next] after slow", "depends_on": ["slow"]},
    ],
}


async def test_cancel_mid_run_cancels_the_prompt_and_starts_nothing_new(
    host,
    fake_model: FakeAnthropic,
) -> None:
    server = host()
    never = fake_model.gate()
    fake_model.script(Turn.text("too late", wait_for=never), marker="[k slow]")
    fake_model.fallback = Turn.text("should not be asked")
    async with _client(server) as client:
        wf = client.workflows.get_or_create(["cancel"])
        sent = await wf.send("run", {"definition": CANCEL})
        run_id = sent.message_id
        assert run_id is not None
        await eventually(
            lambda: asyncio.sleep(0, _first_prompts(fake_model, "[k slow]")),
            timeout=WAIT_S,
            interval=0.2,
            what="slow prompting",
        )
        vm = client.vm.get([f"wf-cancel-{run_id}"])
        sessions = await vm.list_sessions()
        prompting = [s["session_id"] for s in sessions if s["status"] == "prompting"]
        assert len(prompting) == 1, sessions
        await wf.cancel_run(run_id)
        view = await _until(client, "cancel", run_id, _ended)
        assert view["status"] == "cancelled"

        async def prompt_end() -> list[dict[str, Any]]:
            events = await vm.get_session_events(prompting[0])
            return [e for e in events if e["kind"] == "prompt_end"]

        ended = await eventually(prompt_end, timeout=60, interval=0.2, what="prompt_end")
        assert ended[0]["data"].get("stop_reason") in ("cancelled", None), ended
        view = await _view(client, "cancel", run_id)
    assert view["steps"]["slow"]["status"] == "cancelled"
    assert view["steps"]["other"]["status"] == "pending"
    assert view["steps"]["next"]["status"] == "pending"
    assert _first_prompts(fake_model, "[k other]") == []
    assert _first_prompts(fake_model, "[k next]") == []


CRASH: dict[str, Any] = {
    "name": "crash",
    "steps": [
        {"id": "a", "prompt": "[x a] one", "vm": "fresh"},
        {"id": "b", "prompt": "[x b] two after {{steps.a.text}}", "depends_on": ["a"]},
        {"id": "c", "prompt": "[x c] three after {{steps.b.text}}", "depends_on": ["b"]},
    ],
}


@pytest.mark.usefixtures("own_host")
async def test_kill_9_mid_dag_resumes_without_rerunning_completed_steps(
    host,
    fake_model: FakeAnthropic,
) -> None:
    server = host()
    never = fake_model.gate()  # b's first turn (before the crash) never finishes
    fake_model.script(Turn.text("A"), marker="[x a]")
    fake_model.script(Turn.text("lost", wait_for=never), marker="[x b]")
    # The agent from before the crash may ask again through the new host's gateway.
    fake_model.script(*[Turn.text("B")] * 4, marker="[x b]")
    fake_model.script(Turn.text("C"), marker="[x c]")
    async with _client(server) as client:
        sent = await client.workflows.get_or_create(["crash"]).send("run", {"definition": CRASH})
        run_id = sent.message_id
        assert run_id is not None
        await eventually(
            lambda: asyncio.sleep(0, _first_prompts(fake_model, "[x b]")),
            timeout=WAIT_S,
            interval=0.2,
            what="b prompting",
        )
        before = await _view(client, "crash", run_id)
    assert before["steps"]["a"]["status"] == "completed"
    assert before["steps"]["b"]["status"] == "running"

    server.proc.kill()  # kill -9 with b in flight
    server.proc.wait(timeout=30)
    server = host()
    async with _client(server) as client:
        view = await _until(client, "crash", run_id, _ended)
        keys = await _vm_keys(client)
    assert view["status"] == "completed", view["steps"]["b"].get("error")
    # Both vms (a's own, used before the crash only, and the shared one) are gone.
    assert set(view["vms"].values()) == {f"wf-crash-{run_id}-a", f"wf-crash-{run_id}"}
    assert not set(view["vms"].values()) & keys
    steps = view["steps"]
    assert steps["a"]["finished_at"] == before["steps"]["a"]["finished_at"]
    assert steps["c"]["text"] == "C"
    counts = {s: len(_first_prompts(fake_model, f"[x {s}]")) for s in "abc"}
    assert counts["a"] == 1 and counts["c"] == 1 and counts["b"] >= 2, counts
    assert steps["b"]["text"] == "B"
    assert "three after B" in _first_prompts(fake_model, "[x c]")[0]


REPO: dict[str, Any] = {
    "name": "repo",
    "steps": [
        {"id": "look", "prompt": "[p look] read calc.py", "check": "test -f calc.py"},
        {
            "id": "tell",
            "prompt": "[p tell] the code: {{steps.look.files.calc.py}}",
            "depends_on": ["look"],
        },
    ],
}


async def test_a_run_on_the_callers_vm_with_a_repo(
    host,
    fake_model: FakeAnthropic,
    buggy_repo,  # noqa: F811
) -> None:
    """``repo`` is put into the shared vm first and the sessions start in it (the
    check and the relative file reference see calc.py); the caller's ``vm_key`` is the
    shared vm and outlives the run."""
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    fake_model.script(Turn.text("seen"), marker="[p look]")
    fake_model.script(Turn.text("told"), marker="[p tell]")
    async with _client(server) as client:
        await client.vm.get_or_create(["mine"]).resolve()
        wf = client.workflows.get_or_create(["repo"])
        body = {"definition": REPO, "repo": str(buggy_repo), "vm_key": "mine"}
        sent = await wf.send("run", body, wait=True, timeout=WAIT_S)
        assert sent.status == "completed", sent
        assert sent.message_id is not None
        view = await _view(client, "repo", sent.message_id)
        keys = await _vm_keys(client)
    assert view["vms"] == {"shared": "mine"}
    assert view["steps"]["look"]["check"]["exit_code"] == 0
    (told,) = _first_prompts(fake_model, "[p tell]")
    assert "return a - b" in told
    assert "mine" in keys
