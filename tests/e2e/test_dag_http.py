"""DAG workflows end to end over HTTP (issue 11, section 4): a live host process,
real Docker sandboxes with the coding agent, and the scripted fake model upstream
(the one faked part; each step's script is picked by a marker in its prompt).

Params checked at submit time; earlier steps' text in later prompts (asserted on
what the model received); a diamond's middle steps side by side (the model holds
both answers until both asked, and the recorded step times overlap); a failed
step skips its dependents and the run ends ``partial``; ``kill -9`` mid-DAG and a
restart re-run no completed step; cancel and retry over HTTP; a race of three
agents won by the first whose tests pass, the others cancelled;
checkpoint/restore/fork of a vm over HTTP; both examples in ``examples/dag``; and
the CLI against the live server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.live import LiveServer, agentvm
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn, _prompt_text

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "dag"
WAIT_MS = 300_000
TIMEOUT = WAIT_MS / 1000 + 30
FINISHED = {"completed", "partial", "failed", "cancelled"}


# One live host per settings for the module's tests (each uses workflow names and
# markers of its own); a test that kills its host or lists every workflow has one of
# its own (``own_host``).
@pytest.fixture
def host(shared_host: Callable[..., LiveServer]) -> Callable[..., LiveServer]:
    return shared_host


@pytest.fixture
def fake_model(shared_model: FakeAnthropic) -> FakeAnthropic:
    return shared_model


@pytest.fixture
def calc_repo(tmp_path: Path) -> Path:
    """A git repository whose ``sh test.sh`` fails: ``add`` subtracts."""
    repo = tmp_path / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test.sh").write_text(
        "#!/bin/sh\npython3 -c 'import calc; assert calc.add(2, 3) == 5, calc.add(2, 3)'\n"
    )
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "calc"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo


def _prompts(fake: FakeAnthropic, marker: str) -> list[str]:
    """The prompt text (system + user) of every request that carried ``marker``."""
    return [t for r in fake.message_requests() if marker in (t := _prompt_text(r.body))]


async def _view(http: httpx.AsyncClient, name: str, run_id: int) -> dict[str, Any]:
    resp = await http.get(f"/workflows/{name}/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _until(
    http: httpx.AsyncClient, name: str, run_id: int, done: Any, what: str, timeout: float = 300
) -> dict[str, Any]:
    return await eventually(
        lambda: _view(http, name, run_id), done, timeout=timeout, interval=0.2, what=what
    )


async def _sse(http: httpx.AsyncClient, path: str, into: list[tuple[str, Any]]) -> None:
    async with http.stream("GET", path) as resp:
        assert resp.status_code == 200
        name, data = "message", list[str]()
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    into.append((name, json.loads("\n".join(data))))
                name, data = "message", []
            elif line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].strip())


DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "params": [{"name": "topic", "type": "string", "required": True}],
    "steps": [
        {"id": "a", "prompt": "dia-a: start on {{params.topic}}", "mode": "single_shot"},
        {
            "id": "b",
            "prompt": "dia-b: left, after {{steps.a.text}}",
            "depends_on": ["a"],
            "mode": "single_shot",
        },
        {
            "id": "c",
            "prompt": "dia-c: right, after {{steps.a.text}}",
            "depends_on": ["a"],
            "mode": "single_shot",
        },
        {
            "id": "d",
            "prompt": "dia-d: join [{{steps.b.text}}] and [{{steps.c.text}}]",
            "depends_on": ["b", "c"],
            "mode": "single_shot",
        },
        # A branch that fails (its check exits 3) and the step it takes down.
        {"id": "e", "prompt": "dia-e: doomed", "mode": "single_shot", "check": "exit 3"},
        {"id": "f", "prompt": "dia-f: never asked", "depends_on": ["e"]},
    ],
}


async def test_diamond_interpolation_failure_and_events(host, fake_model) -> None:
    server = host()
    both = fake_model.gate()
    fake_model.script(Turn.text("alpha-out"), marker="dia-a")
    fake_model.script(Turn.text("beta-out", wait_for=both), marker="dia-b")
    fake_model.script(Turn.text("gamma-out", wait_for=both), marker="dia-c")
    fake_model.script(Turn.text("delta-out"), marker="dia-d")
    fake_model.script(Turn.text("tried"), marker="dia-e")
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        resp = await http.put("/workflows/diamond", json=DIAMOND)
        assert resp.status_code == 200, resp.text
        for params, field in (({}, "params.topic"), ({"topic": 5}, "params.topic")):
            bad = await http.post("/workflows/diamond/runs", json={"params": params})
            assert bad.status_code == 400, bad.text
            assert bad.json()["error"]["metadata"]["field"] == field

        started = await http.post("/workflows/diamond/runs", json={"params": {"topic": "sums"}})
        assert started.status_code == 202, started.text
        rid = started.json()["run_id"]
        events: list[tuple[str, Any]] = []
        reader = asyncio.create_task(_sse(http, f"/workflows/diamond/runs/{rid}/events", events))
        # b and c both asked the model before either got its answer: side by side.
        await eventually(
            lambda: asyncio.sleep(0, [_prompts(fake_model, m) for m in ("dia-b", "dia-c")]),
            lambda found: all(found),
            timeout=240,
            interval=0.2,
            what="steps b and c both prompting",
        )
        both.set()
        await asyncio.wait_for(reader, 300)
        view = await _view(http, "diamond", rid)

    assert view["status"] == "partial", view
    steps = view["steps"]
    status = {sid: steps[sid]["status"] for sid in view["order"]}
    assert status == {
        "a": "completed",
        "b": "completed",
        "c": "completed",
        "d": "completed",
        "e": "failed",
        "f": "skipped",
    }
    assert steps["f"]["reason"] == "dependency_failed"
    assert steps["d"]["text"] == "delta-out"
    b, c = steps["b"], steps["c"]
    assert max(b["started_at"], c["started_at"]) < min(b["finished_at"], c["finished_at"])
    # Earlier text reached later prompts.
    assert "start on sums" in _prompts(fake_model, "dia-a")[0]
    assert "after alpha-out" in _prompts(fake_model, "dia-b")[0]
    assert "join [beta-out] and [gamma-out]" in _prompts(fake_model, "dia-d")[0]
    assert _prompts(fake_model, "dia-f") == []

    names = [n for n, _ in events]
    assert names[-1] == "run_failed", names
    assert {"step_completed", "step_failed", "step_skipped", "workflow_completed"} <= set(names)
    assert all(p.get("run_id") == rid for _, p in events)
    done = next(p for n, p in events if n == "workflow_completed")
    assert done["status"] == "partial"
    completed = {p["step"]: p for n, p in events if n == "step_completed"}
    assert completed["d"]["text"] == "delta-out"


# Slow: the same path (kill -9 with a step in flight, completed steps not rerun)
# is tests/dag/test_executor.py::test_kill_9_mid_dag_resumes_without_rerunning_completed_steps
# in the default suite.
@pytest.mark.slow
@pytest.mark.usefixtures("own_host")
async def test_kill_9_mid_dag_does_not_rerun_completed_steps(host, fake_model) -> None:
    definition = {
        "name": "two-steps",
        "steps": [
            {"id": "one", "prompt": "k9-one: first", "mode": "single_shot"},
            {"id": "two", "prompt": "k9-two: then {{steps.one.text}}", "depends_on": ["one"]},
        ],
    }
    never = fake_model.gate()  # the second step's first answer (before the crash) never comes
    fake_model.script(Turn.text("one-done"), marker="k9-one")
    fake_model.script(Turn.text("lost", wait_for=never), marker="k9-two")
    # Several: the agent from before the crash may retry its request against the new
    # host too (harmless: a text answer).
    fake_model.script(*[Turn.text("two-done")] * 4, marker="k9-two")
    server = host()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        resp = await http.post("/workflows/runs", json={"definition": definition})
        assert resp.status_code == 202, resp.text
        rid = resp.json()["run_id"]
        await eventually(
            lambda: asyncio.sleep(0, _prompts(fake_model, "k9-two")),
            timeout=90,
            interval=0.2,
            what="step two prompting",
        )
        before = await _view(http, "two-steps", rid)
    assert before["steps"]["one"]["status"] == "completed"

    server.proc.kill()  # kill -9 with step two in flight
    server.proc.wait(timeout=30)
    server = host()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        after = await _until(
            http, "two-steps", rid, lambda v: v["status"] in FINISHED, "the run ending", 200
        )
    assert after["status"] == "completed", after
    assert after["steps"]["two"]["text"] == "two-done"
    one = after["steps"]["one"]
    # Step one ran once: the model was asked once, and its record is the same.
    assert len(_prompts(fake_model, "k9-one")) == 1
    assert one["started_at"] == before["steps"]["one"]["started_at"]
    assert one["finished_at"] == before["steps"]["one"]["finished_at"]
    assert "then one-done" in _prompts(fake_model, "k9-two")[-1]


async def test_cancel_aborts_the_prompt_and_retry_keeps_completed_steps(host, fake_model) -> None:
    """Cancel over HTTP while step two's prompt is in flight: the run ends
    ``cancelled`` at once (the model never answered); a retry runs step two again
    and not step one."""
    definition = {
        "name": "abortable",
        "steps": [
            {"id": "one", "prompt": "ab-one: first", "mode": "single_shot"},
            {"id": "two", "prompt": "ab-two: then {{steps.one.text}}", "depends_on": ["one"]},
        ],
    }
    never = fake_model.gate()
    fake_model.script(Turn.text("one-done"), marker="ab-one")
    fake_model.script(Turn.text("held", wait_for=never), marker="ab-two")
    fake_model.script(*[Turn.text("two-done")] * 3, marker="ab-two")
    server = host()
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        assert (await http.put("/workflows/abortable", json=definition)).status_code == 200
        resp = await http.post("/workflows/abortable/runs", json={})
        assert resp.status_code == 202, resp.text
        rid = resp.json()["run_id"]
        await eventually(
            lambda: asyncio.sleep(0, _prompts(fake_model, "ab-two")),
            timeout=240,
            interval=0.2,
            what="step two prompting",
        )
        cancelled = await http.post(f"/workflows/abortable/runs/{rid}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        view = await _until(http, "abortable", rid, lambda v: v["status"] in FINISHED, "end")
        assert view["status"] == "cancelled", view
        assert view["steps"]["one"]["status"] == "completed"
        assert view["steps"]["two"]["status"] != "completed"
        again = await http.post(f"/workflows/abortable/runs/{rid}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"

        retried = await http.post(f"/workflows/abortable/runs/{rid}/retry")
        assert retried.status_code == 200, retried.text
        view = await _until(http, "abortable", rid, lambda v: v["status"] in FINISHED, "retry")
    assert view["status"] == "completed", view
    assert view["steps"]["two"]["text"] == "two-done"
    assert len(_prompts(fake_model, "ab-one")) == 1  # step one was not run again


async def test_race_example_first_passing_agent_wins(host, fake_model, calc_repo) -> None:
    """examples/dag/race_fixes.json: candidate 0 does nothing (its tests fail),
    candidate 1 fixes the bug (its tests pass: it wins), candidate 2 is still
    working when 1 wins and is cancelled."""
    never = fake_model.gate()
    fake_model.script(Turn.text("Looks fine to me."), marker="Approach: minimal")
    fake_model.script(
        Turn.edit("calc.py", "return a - b", "return a + b"),
        Turn.text("Rewrote add."),
        marker="Approach: rewrite",
    )
    fake_model.script(Turn.shell("true", wait_for=never), marker="Approach: root cause")
    fake_model.script(Turn.text("add() adds now."), marker="Summarise for a changelog")
    server = host(AGENTVM_REPO_ROOTS=str(calc_repo.parent))
    definition = json.loads((EXAMPLES / "race_fixes.json").read_text())
    body = {
        "definition": definition,
        "params": {"repo": "calc", "issue": "add(2, 3) returns -1"},
        "repo": str(calc_repo),
        "wait": True,
        "timeout_ms": WAIT_MS,
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        resp = await http.post("/workflows/runs", json=body)
        assert resp.status_code == 200, resp.text
        view = resp.json()

        used = {*view["vms"].values(), *(c["vm"] for c in view["steps"]["fix"]["candidates"])}

        async def left() -> list[str]:
            actors = (await http.get("/actors", params={"name": "vm"})).json()["actors"]
            prefix = f"wf-{definition['name']}-{view['run_id']}"
            # Also the run's first shared vm, which the winner's vm replaced.
            return [
                a["key"][0] for a in actors if a["key"][0] in used or a["key"][0].startswith(prefix)
            ]

        # The run completed: none of its vms is left (losers went when the race ended).
        vms = await eventually(left, lambda v: v == [], timeout=60, interval=0.5, what="no vms")
    assert view["status"] == "completed", view
    fix = view["steps"]["fix"]
    assert fix["winner"] == 1, fix
    statuses = [c["status"] for c in fix["candidates"]]
    # Candidate 0's tests fail: it cannot win (whether it had ended or was cancelled
    # when 1 won depends on timing).
    assert statuses[1:] == ["won", "cancelled"] and statuses[0] in ("failed", "cancelled")
    assert fix["text"] == "Rewrote add."
    assert "Rewrote add." in _prompts(fake_model, "Summarise for a changelog")[0]
    assert view["steps"]["summary"]["text"] == "add() adds now."
    assert vms == [], view["vms"]


async def test_checkpoint_restore_and_fork_over_http(host) -> None:
    server = host()

    async def act(http: httpx.AsyncClient, key: str, action: str, *args: Any) -> Any:
        resp = await http.post(f"/actors/vm/{key}/actions/{action}", json={"args": list(args)})
        assert resp.status_code == 200, resp.text
        return resp.json()["output"]

    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        await act(http, "dag-ck", "write_file", "notes.txt", "old")
        await act(http, "dag-ck", "checkpoint", "base")
        await act(http, "dag-ck", "write_file", "notes.txt", "new")
        await act(http, "dag-ck", "write_file", "extra.txt", "x")
        await act(http, "dag-ck", "restore", "base")
        assert (await http.get("/vms/dag-ck/files/home/user/notes.txt")).content == b"old"
        gone = await http.get("/vms/dag-ck/files/home/user/extra.txt")
        assert gone.status_code == 404, gone.text
        # A fork starts from the checkpoint and then goes its own way.
        await act(http, "dag-ck", "fork", "dag-ck-2", {"checkpoint": "base"})
        await act(http, "dag-ck-2", "write_file", "notes.txt", "fork's")
        assert (await http.get("/vms/dag-ck/files/home/user/notes.txt")).content == b"old"
        assert (await http.get("/vms/dag-ck-2/files/home/user/notes.txt")).content == b"fork's"


@pytest.mark.usefixtures("own_host")
async def test_fix_review_apply_example_through_the_cli(host, fake_model, calc_repo) -> None:
    """examples/dag/fix_review_apply.json run by ``agentvm workflow run FILE --json``
    (the local repo uploaded by the CLI), then ``put`` and ``ls``."""
    fake_model.script(
        Turn.edit("calc.py", "return a - b", "return a + b"),
        Turn.text("Changed - to + in add."),
        marker="Fix this bug in calc",
    )
    fake_model.script(Turn.text("Add a docstring to add."), marker="Review this fix of calc")
    fake_model.script(
        Turn.edit("calc.py", "def add(a, b):\n", 'def add(a, b):\n    """a + b"""\n'),
        Turn.text("Added the docstring."),
        marker="Apply this review to calc",
    )
    server = host()
    example = str(EXAMPLES / "fix_review_apply.json")
    url = ("--url", server.url)
    issue = "add(2, 3) returns -1"
    res = await asyncio.to_thread(
        agentvm,
        *("workflow", "run", example, "-p", "repo=calc", "-p", f"issue={issue}"),
        *("--repo", str(calc_repo), "--json", "--timeout", "300", *url),
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    view = json.loads(res.stdout)
    assert view["status"] == "completed", view
    assert [view["steps"][s]["status"] for s in view["order"]] == ["completed"] * 3
    assert view["steps"]["fix"]["checkpoint"], view["steps"]["fix"]
    assert "Changed - to + in add." in _prompts(fake_model, "Review this fix of calc")[0]
    assert "Add a docstring to add." in _prompts(fake_model, "Apply this review to calc")[0]
    assert issue in _prompts(fake_model, "Fix this bug in calc")[0]
    edits = [c["name"] for c in view["steps"]["apply"]["tool_calls"]]
    assert len(edits) == 1, view["steps"]["apply"]

    put = await asyncio.to_thread(agentvm, "workflow", "put", example, *url)
    assert put.returncode == 0, put.stderr
    listed = await asyncio.to_thread(agentvm, "workflow", "ls", "--json", *url)
    assert listed.returncode == 0, listed.stderr
    assert [w["name"] for w in json.loads(listed.stdout)] == ["fix-review-apply"]
