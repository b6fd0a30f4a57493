"""Runs of the built-in orchestrators end to end, over HTTP against a live host
process: real Docker sandboxes with the coding agent, the gateway, and the scripted
fake model upstream (the one faked part). Each request is a run: it fails alone,
runs side by side with others, can be cancelled and retried, survives ``kill -9``,
and leaves no sandbox behind."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from host.sandbox.backend import LABEL_HOST, LABEL_KEY
from tests.server.live import LiveServer
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn

pytestmark = pytest.mark.docker

FIX_EDIT = {"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}
# Idempotent: harmless when an agent from before a crash also runs it.
FIX_SED = {"command": "sed -i 's/return a - b/return a + b/' calc.py"}
WAIT_MS = 300_000


# The tests that neither restart their host nor look at every run of a key or at its
# containers share one live host (and fake model) for the module; the others use
# ``own_host``. The shared host's repository root is pytest's base temporary
# directory, which holds every test's ``buggy_repo``: one setting, one host.
@pytest.fixture
def host(shared_host: Callable[..., LiveServer]) -> Callable[..., LiveServer]:
    return shared_host


@pytest.fixture
def fake_model(shared_model: FakeAnthropic) -> FakeAnthropic:
    return shared_model


def _roots(repo: Path) -> str:
    """``AGENTVM_REPO_ROOTS`` for a shared host: the base temporary directory."""
    return str(repo.parents[1])


def _fix_body(repo: Path, marker: str, **extra: Any) -> dict[str, Any]:
    return {
        "repo": str(repo),
        "issue": f"{marker}: add(2, 3) returns -1",
        "test_command": "sh test_calc.sh",
        **extra,
    }


def _clone_and_am(src: Path, dest: Path, patch: bytes) -> subprocess.CompletedProcess[bytes]:
    """``git am`` of ``patch`` in a fresh clone of ``src`` (what ``agentvm apply`` does)."""
    subprocess.run(["git", "clone", "-q", str(src), str(dest)], check=True)
    return subprocess.run(
        ["git", "-C", str(dest), "am", "-q"],
        input=patch,
        capture_output=True,
        env={"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"},
    )


async def _send(
    http: httpx.AsyncClient, actor: str, queue: str, body: Any, *, wait: bool = False
) -> dict[str, Any]:
    payload: dict[str, Any] = {"body": body}
    if wait:
        payload.update(wait=True, timeout_ms=WAIT_MS)
    resp = await http.post(f"/actors/{actor}/main/queues/{queue}", json=payload)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _run(http: httpx.AsyncClient, actor: str, run_id: int) -> dict[str, Any]:
    resp = await http.get(f"/actors/{actor}/main/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def _until(
    http: httpx.AsyncClient, actor: str, run_id: int, statuses: set[str], timeout: float = 300
) -> dict[str, Any]:
    return await eventually(
        lambda: _run(http, actor, run_id),
        lambda r: r["status"] in statuses,
        timeout=timeout,
        interval=0.2,
        what=f"run {run_id} {statuses}",
    )


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["path"].rsplit("/", 1)[-1]: e for e in run["history"] if e["kind"] == "step"}


def _vm_containers(host_id: str, key: str) -> list[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_HOST}={host_id}"})
        return [c.name for c in found if json.loads(c.labels.get(LABEL_KEY, "[]")) == [key]]
    finally:
        client.close()


async def _vm_keys(http: httpx.AsyncClient) -> list[str]:
    actors = (await http.get("/actors", params={"name": "vm"})).json()["actors"]
    return [a["key"][0] for a in actors]


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t"}
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env={**env, "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.usefixtures("own_host")
async def test_a_failing_run_answers_failed_and_the_next_request_is_served(
    host, fake_model, buggy_repo
):
    """Bad input found late (a repository URL the egress proxy cannot clone) fails
    that run — the waiting sender gets ``failed`` with the error at once — and the
    next request on the same key completes."""
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    fake_model.script(Turn.tool("edit", FIX_EDIT), Turn.text("Fixed."), marker="next-one")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        bad = {"repo": "git://example.invalid/calc.git", "issue": "x", "test_command": "true"}
        failed = await _send(http, "automator", "fixBug", bad, wait=True)
        assert failed["status"] == "failed", failed
        assert failed["error"]["group"] == "request", failed
        assert failed["error"]["metadata"]["field"] == "repo", failed
        listed = (await http.get("/actors/automator/main/runs")).json()["runs"]
        assert [(r["run_id"], r["status"]) for r in listed] == [(failed["message_id"], "failed")]

        done = await _send(
            http, "automator", "fixBug", _fix_body(buggy_repo, "next-one"), wait=True
        )
        assert done["status"] == "completed", done
        # The vm is destroyed before the answer; only Docker's removal follows it.
        assert done["response"]["vm"] not in await _vm_keys(http)
    result = done["response"]
    assert result["fixed"] is True and result["attempts"] == 1, result
    assert result["tests_exit_code"] == 0, result["test_output"]
    assert result["summary"] == "Fixed."
    assert result["usage"]["output_tokens"] >= 40, result["usage"]  # two model turns


@pytest.mark.usefixtures("own_host")
async def test_code_review_without_a_review_file_completes_with_findings(
    host, host_id, fake_model, buggy_repo
):
    """The model answers the review in text (never writes review.md): the review is
    its final message, and its JSON block becomes structured findings."""
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    finding = {"file": "calc.py", "line": 2, "severity": "error", "text": "add() subtracts"}
    answer = f"add is wrong.\n\n```json\n{json.dumps({'findings': [finding]})}\n```"
    fake_model.script(Turn.text(answer), marker="Review the code at")
    fake_model.script(Turn.text("Applied."), marker="Apply the following review feedback")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        body = {"file_path": "/home/user/repo/calc.py", "repo": str(buggy_repo)}
        done = await _send(http, "pipeline", "codeReview", body, wait=True)
        assert done["status"] == "completed", done
        result = done["response"]
        assert result["review_source"] == "message"
        assert result["review"] == answer
        assert result["findings"] == [finding]
        assert result["fix_stop_reason"] == "end_turn"
        run = await _run(http, "pipeline", done["message_id"])
        assert run["meta"]["vm"] == result["vm"]
        # The run's vm was destroyed when the run ended (no actor); its container is
        # removed in the background, right after the answer.
        assert result["vm"] not in await _vm_keys(http)
    await eventually(
        lambda: asyncio.to_thread(_vm_containers, host_id, result["vm"]),
        lambda names: names == [],
        timeout=60,
        interval=0.2,
        what="the completed run's container removed",
    )


async def test_three_fix_bug_runs_on_one_key_overlap(host, fake_model, tmp_path, buggy_repo):
    """Three runs on ``automator/main`` are in their agent step at the same time:
    every first model turn is held until all three asked (they can only all ask if
    they run side by side), and the recorded step times overlap."""
    server = host(AGENTVM_REPO_ROOTS=_roots(buggy_repo))
    gate = fake_model.gate()
    for i in range(3):
        fake_model.script(
            Turn.tool("edit", FIX_EDIT, wait_for=gate), Turn.text("Fixed."), marker=f"side-{i}"
        )
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        sent = [
            await _send(http, "automator", "fixBug", _fix_body(buggy_repo, f"side-{i}"))
            for i in range(3)
        ]
        await asyncio.to_thread(fake_model.wait_for_requests, 3, 240)
        running = (await http.get("/actors/automator/main/runs?status=running")).json()["runs"]
        assert len(running) == 3, running
        gate.set()
        runs = [await _until(http, "automator", s["message_id"], {"completed"}) for s in sent]
    fixes = [_steps(r)["fix-bug"] for r in runs]
    assert max(f["started_at"] for f in fixes) < min(f["finished_at"] for f in fixes), fixes
    assert all(r["result"]["fixed"] for r in runs)
    assert len({r["result"]["vm"] for r in runs}) == 3  # a vm per run


async def test_cancel_a_running_fix_mid_prompt(host, fake_model, buggy_repo):
    """The model is slow (its answer held back): cancelling the run interrupts the
    agent's prompt through the session, the run ends ``cancelled`` and the waiting
    sender is told."""
    server = host(AGENTVM_REPO_ROOTS=_roots(buggy_repo))
    never = fake_model.gate()
    fake_model.script(Turn.tool("edit", FIX_EDIT, wait_for=never), marker="cancel-me")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        waiter = asyncio.create_task(
            _send(
                http,
                "automator",
                "fixBug",
                _fix_body(buggy_repo, "cancel-me", vm_key="fix-cancel", keep_vm=True),
                wait=True,
            )
        )
        await asyncio.to_thread(fake_model.wait_for_requests, 1, 240)
        runs = (await http.get("/actors/automator/main/runs")).json()["runs"]
        # The key's only running run (earlier tests' runs on the shared host ended).
        running = [r for r in runs if r["status"] == "running"]
        assert len(running) == 1, runs
        run_id = running[0]["run_id"]
        sessions = (
            await http.post("/actors/vm/fix-cancel/actions/list_sessions", json={"args": []})
        ).json()["output"]
        assert [s["status"] for s in sessions if s["agent_type"] == "coding-agent"], sessions
        prompting = [s["session_id"] for s in sessions if s["status"] == "prompting"]
        assert len(prompting) == 1, sessions

        cancelled = await http.post(f"/actors/automator/main/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        answer = await asyncio.wait_for(waiter, 60)
        assert answer == {"status": "cancelled", "message_id": run_id} or (
            answer["status"] == "cancelled" and answer["message_id"] == run_id
        ), answer
        run = await _until(http, "automator", run_id, {"cancelled"}, timeout=60)
        assert _steps(run)["clone-repo"]["status"] == "completed"

        async def prompt_end() -> list[dict[str, Any]]:
            resp = await http.post(
                "/actors/vm/fix-cancel/actions/get_session_events", json={"args": prompting}
            )
            events: list[dict[str, Any]] = resp.json()["output"]
            return [e for e in events if e["kind"] == "prompt_end"]

        # The agent's turn ended (cancelled through the session), not left running.
        ended = await eventually(prompt_end, timeout=60, interval=0.2, what="prompt_end")
        assert ended[0]["data"].get("stop_reason") in ("cancelled", None), ended
        again = await http.post(f"/actors/automator/main/runs/{run_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"


async def test_retry_a_failed_run_does_not_repeat_completed_steps(host, fake_model, buggy_repo):
    """The model upstream keeps answering errors: the fix step exhausts its retries
    and the run fails (its vm destroyed). Once the model answers, a retry runs again
    from the failed step: the clone step's record is the same one."""
    server = host(AGENTVM_REPO_ROOTS=_roots(buggy_repo))
    overloaded = Turn.fail(400, "invalid_request_error", "upstream refuses")
    fake_model.script(*[overloaded] * 20, marker="retry-me")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        failed = await _send(
            http, "automator", "fixBug", _fix_body(buggy_repo, "retry-me"), wait=True
        )
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"], failed
        run_id = failed["message_id"]
        before = _steps(await _run(http, "automator", run_id))
        assert before["clone-repo"]["status"] == "completed"
        assert before["fix-bug"]["status"] == "failed"
        no_patch = await http.get(f"/actors/automator/main/runs/{run_id}/patch")
        assert no_patch.status_code == 404 and no_patch.json()["error"]["code"] == "no_patch"

        fake_model.scripts.clear()
        fake_model.script(Turn.tool("edit", FIX_EDIT), Turn.text("Fixed."), marker="retry-me")
        retried = await http.post(f"/actors/automator/main/runs/{run_id}/retry")
        assert retried.status_code == 200, retried.text
        run = await _until(http, "automator", run_id, {"completed", "failed"})
    assert run["status"] == "completed", (run["error"], run["history"])
    assert run["result"]["fixed"] is True
    after = _steps(run)
    assert after["clone-repo"]["attempts"] == 1
    assert after["clone-repo"]["started_at"] == before["clone-repo"]["started_at"]
    assert after["clone-repo"]["finished_at"] == before["clone-repo"]["finished_at"]
    assert after["fix-bug"]["status"] == "completed"


@pytest.mark.usefixtures("own_host")
async def test_kill_9_with_three_runs_in_flight_all_complete_after_restart(
    host, fake_model, buggy_repo
):
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    never = fake_model.gate()  # the first turns (before the crash) never finish
    for i in range(3):
        fake_model.script(Turn.tool("bash", FIX_SED, wait_for=never), marker=f"crash-{i}")
    for i in range(3):
        turns = [Turn.tool("bash", FIX_SED), Turn.text("Fixed.")] * 4
        fake_model.script(*turns, marker=f"crash-{i}")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        sent = [
            await _send(http, "automator", "fixBug", _fix_body(buggy_repo, f"crash-{i}"))
            for i in range(3)
        ]
        await asyncio.to_thread(fake_model.wait_for_requests, 3, 240)
        before = [_steps(await _run(http, "automator", s["message_id"])) for s in sent]
    assert all(b["clone-repo"]["status"] == "completed" for b in before)

    server.proc.kill()  # kill -9 with three fix-bug steps in flight
    server.proc.wait(timeout=30)
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        runs = [await _until(http, "automator", s["message_id"], {"completed"}) for s in sent]
    for run, old in zip(runs, before, strict=True):
        assert run["result"]["fixed"] is True, run["result"]
        steps = _steps(run)
        # No completed step ran again: the same records, one attempt each.
        assert steps["clone-repo"]["attempts"] == 1
        assert steps["clone-repo"]["finished_at"] == old["clone-repo"]["finished_at"]
        for name in ("run-tests", "make-patch", "usage", "record-result"):
            assert steps[name]["attempts"] == 1, (name, steps[name])


async def test_failing_tests_prompt_the_same_session_again(host, fake_model, buggy_repo):
    """The agent's first turn does not fix the bug: the tests fail, the same session
    is prompted with their output, the second turn fixes it."""
    server = host(AGENTVM_REPO_ROOTS=_roots(buggy_repo))
    fake_model.script(
        Turn.tool("bash", {"command": "true"}),
        Turn.text("Should be fine now."),
        Turn.tool("edit", FIX_EDIT),
        Turn.text("Now it adds."),
        marker="two-tries",
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        done = await _send(
            http, "automator", "fixBug", _fix_body(buggy_repo, "two-tries"), wait=True
        )
        assert done["status"] == "completed", done
        run = await _run(http, "automator", done["message_id"])
    result = done["response"]
    assert result["attempts"] == 2 and result["fixed"] is True, result
    assert result["summary"] == "Now it adds."
    steps = _steps(run)
    assert steps["run-tests"]["output"]["exit_code"] != 0
    assert steps["run-tests-2"]["output"]["exit_code"] == 0
    # The second prompt went to the same conversation: it carries the first turns.
    again = [r for r in fake_model.message_requests() if "The tests still fail" in str(r.body)]
    assert again and "two-tries" in str(again[0].body["messages"][0])
    assert steps["fix-bug"]["output"]["session_id"] == steps["fix-bug-2"]["output"]["session_id"]


async def test_tests_still_failing_complete_with_fixed_false(host, fake_model, buggy_repo):
    server = host(AGENTVM_REPO_ROOTS=_roots(buggy_repo))
    fake_model.script(*[Turn.text("I cannot fix this.")] * 2, marker="hopeless")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        body = _fix_body(buggy_repo, "hopeless", max_attempts=2)
        done = await _send(http, "automator", "fixBug", body, wait=True)
    assert done["status"] == "completed", done
    result = done["response"]
    assert (result["fixed"], result["attempts"]) == (False, 2)
    assert result["tests_exit_code"] != 0 and result["patch"] is None


async def test_fix_delivered_as_a_branch_and_as_a_patch(host, fake_model, buggy_repo, tmp_path):
    """``deliver: branch`` writes the fix into the source repository as a branch
    (working tree untouched); the patch route serves a patch that ``git am`` applies
    to a fresh clone. A blob or URL repository cannot take ``branch``: a 400."""
    server = host(AGENTVM_REPO_ROOTS=_roots(buggy_repo))
    fake_model.script(Turn.tool("edit", FIX_EDIT), Turn.text("Fixed."), marker="deliver-me")
    head_before = _git(buggy_repo, "rev-parse", "HEAD").strip()
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        for repo in ("blob:sha256:" + "a" * 64, "https://example.com/calc.git"):
            refused = await http.post(
                "/actors/automator/main/queues/fixBug",
                json={"body": {"repo": repo, "issue": "x", "deliver": "branch"}},
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["metadata"]["field"] == "body.deliver"
        done = await _send(
            http,
            "automator",
            "fixBug",
            _fix_body(buggy_repo, "deliver-me", deliver="branch"),
            wait=True,
        )
        assert done["status"] == "completed", done
        run_id = done["message_id"]
        patch = await http.get(f"/actors/automator/main/runs/{run_id}/patch")
    result = done["response"]
    branch = f"agentvm/fix-{run_id}"
    assert result["branch"] == branch and result["fixed"] is True, result
    assert "return a + b" in _git(buggy_repo, "show", f"{branch}:calc.py")
    assert _git(buggy_repo, "rev-parse", f"{branch}~1").strip() == head_before
    # The source repository's checkout is untouched.
    assert _git(buggy_repo, "rev-parse", "HEAD").strip() == head_before
    assert _git(buggy_repo, "status", "--porcelain") == ""
    assert "return a - b" in (buggy_repo / "calc.py").read_text()

    assert patch.status_code == 200, patch.text
    assert patch.headers["content-type"].startswith("text/x-patch")
    assert "Subject: [PATCH] Fix: deliver-me" in patch.text
    fresh = tmp_path / "fresh"
    applied = _clone_and_am(buggy_repo, fresh, patch.content)
    assert applied.returncode == 0, applied.stderr
    assert "return a + b" in (fresh / "calc.py").read_text()


@pytest.mark.usefixtures("own_host")
async def test_kept_vms_stay_until_they_expire(host, host_id, fake_model, buggy_repo):
    """``keep_vm`` keeps the run's vm after the run; it expires after
    ``AGENTVM_KEEP_VM_HOURS`` (here about 5 s) through a durable schedule."""
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent), AGENTVM_KEEP_VM_HOURS="0.0015")
    fake_model.script(Turn.tool("edit", FIX_EDIT), Turn.text("Fixed."), marker="keep-me")
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_MS / 1000 + 30) as http:
        body = _fix_body(buggy_repo, "keep-me", vm_key="kept-vm", keep_vm=True)
        done = await _send(http, "automator", "fixBug", body, wait=True)
        assert done["status"] == "completed", done
        assert "kept-vm" in await _vm_keys(http)
        fixed = await http.get("/vms/kept-vm/files/home/user/repo/calc.py")
        assert b"return a + b" in fixed.content
        await eventually(
            lambda: _vm_keys(http),
            lambda keys: "kept-vm" not in keys,
            timeout=120,
            interval=0.5,
            what="the kept vm expired",
        )
    await eventually(
        lambda: asyncio.to_thread(_vm_containers, host_id, "kept-vm"),
        lambda names: names == [],
        timeout=60,
        interval=0.5,
        what="the kept vm's container removed",
    )
