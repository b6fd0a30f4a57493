"""The built-in orchestrators end to end, over HTTP against a live host process:
real Docker sandboxes, the real coding agent, the gateway, and a scripted fake
model upstream (the one faked part)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orchestrator import create_client
from tests.e2e.conftest import HOST_KEY
from tests.server.live import LiveServer, agentvm
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn

pytestmark = pytest.mark.docker

FIX_EDIT = {"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}
# Idempotent, so it does no harm when an agent from before a crash also runs it.
FIX_SED = {"command": "sed -i 's/return a - b/return a + b/' calc.py"}


# One live host per settings for the module's tests (each uses vm keys and markers of
# its own); the kill -9 test has one of its own (``own_host``).
@pytest.fixture
def host(shared_host: Callable[..., LiveServer]) -> Callable[..., LiveServer]:
    return shared_host


@pytest.fixture
def fake_model(shared_model: FakeAnthropic) -> FakeAnthropic:
    return shared_model


def _steps(run: Any) -> dict[str, Any]:
    """The steps of a run (``handle.run(id)``) by name."""
    return {e.path.rsplit("/", 1)[-1]: e for e in run.history if e.kind == "step"}


async def test_fix_bug_fixes_the_repo_and_files_are_inspectable_meanwhile(
    host, fake_model, buggy_repo
):
    server = host()
    gate = fake_model.gate()
    fake_model.script(
        Turn.tool("edit", FIX_EDIT, wait_for=gate),
        Turn.text("Fixed: add() now adds."),
        marker="add-subtracts",
    )
    client = create_client(server.url)
    automator = client.automator.get_or_create("main")
    sent = await automator.send(
        "fixBug",
        {
            "repo": str(buggy_repo),
            "issue": "add-subtracts: add(2, 3) returns -1",
            "test_command": "sh test_calc.sh",
            "vm_key": "fix-e2e",
            "keep_vm": True,  # read back below; a run's vm is destroyed otherwise
        },
    )
    assert sent.status == "queued"

    # The agent is mid-turn (its first model response is held back): the sandbox
    # is inspectable over HTTP and the CLI while the workflow runs.
    await asyncio.to_thread(fake_model.wait_for_requests, 1, 180)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        file = await http.get("/vms/fix-e2e/files/home/user/repo/calc.py")
        assert file.status_code == 200 and b"return a - b" in file.content
        listing = await http.get("/vms/fix-e2e/ls/home/user/repo")
        assert "calc.py" in {e["name"] for e in listing.json()["entries"]}
        run = (await http.get(f"/actors/automator/main/runs/{sent.message_id}")).json()
        assert run["status"] == "running" and run["meta"] == {"vm": "fix-e2e"}
        assert any(e["path"] == "clone-repo" and e["status"] == "completed"
                   for e in run["history"])  # fmt: skip
    cat = await asyncio.to_thread(
        agentvm, "vm", "cat", "fix-e2e", "/home/user/repo/calc.py", "--url", server.url
    )
    assert cat.returncode == 0 and b"return a - b" in cat.stdout
    gate.set()

    result = await eventually(
        lambda: automator.get_result(sent.message_id),
        lambda r: r is not None,
        timeout=240,
        interval=0.2,
        what="fixBug result",
    )
    assert result["tests_exit_code"] == 0, result["test_output"]
    assert "+    return a + b" in result["diff"]
    steps = _steps(await automator.run(sent.message_id))
    for name in ("clone-repo", "fix-bug", "run-tests", "make-patch"):
        assert steps[name].status == "completed", (name, steps[name])
    # The gateway put the host's key on every model request; the sandbox had none.
    assert {r.api_key for r in fake_model.message_requests()} == {HOST_KEY}
    fixed = await client.vm.get("fix-e2e").read_file("/home/user/repo/calc.py")
    assert b"return a + b" in fixed


# Slow: tests/e2e/test_runs_e2e.py::test_kill_9_with_three_runs_in_flight_all_complete_after_restart
# covers the same path (fixBug resumed after kill -9, clone-repo not rerun) by default.
@pytest.mark.slow
@pytest.mark.usefixtures("own_host")
async def test_fix_bug_resumes_after_kill_9_without_cloning_again(host, fake_model, buggy_repo):
    server = host()
    never = fake_model.gate()  # the first attempt's model turn never finishes
    fake_model.script(Turn.tool("bash", FIX_SED, wait_for=never), marker="kill-me")
    fake_model.script(*[Turn.tool("bash", FIX_SED), Turn.text("Fixed.")] * 4, marker="kill-me")
    client = create_client(server.url)
    automator = client.automator.get_or_create("main")
    sent = await automator.send(
        "fixBug",
        {
            "repo": str(buggy_repo),
            "issue": "kill-me: add subtracts",
            "test_command": "sh test_calc.sh",
            "vm_key": "fix-kill",
        },
    )
    await asyncio.to_thread(fake_model.wait_for_requests, 1, 180)
    before = _steps(await automator.run(sent.message_id))
    assert before["clone-repo"].status == "completed"
    assert "fix-bug" not in before or before["fix-bug"].status != "completed"

    server.proc.kill()  # kill -9 in the middle of the fix-bug step
    server.proc.wait(timeout=30)
    server = host()
    client = create_client(server.url)
    automator = client.automator.get_or_create("main")

    result = await eventually(
        lambda: automator.get_result(sent.message_id),
        lambda r: r is not None,
        timeout=240,
        interval=0.2,
        what="fixBug result after restart",
    )
    assert result["tests_exit_code"] == 0, result["test_output"]
    after = _steps(await automator.run(sent.message_id))
    # clone-repo was not run again: the same record, one attempt.
    assert after["clone-repo"].attempts == 1
    assert after["clone-repo"].finished_at == before["clone-repo"].finished_at
    assert after["fix-bug"].status == "completed"
    assert after["run-tests"].status == "completed"


async def test_code_review_passes_the_review_to_the_second_session(host, fake_model, buggy_repo):
    server = host()
    review = "REVIEW-7f3: add() must use +, not -"
    fake_model.script(
        Turn.tool("write", {"path": "/home/user/review.md", "content": review}),
        Turn.text("Review written."),
        marker="Review the code at",
    )
    # Only a prompt that carries the first session's review gets an answer.
    fake_model.script(Turn.text("Applied the review."), marker=review)
    client = create_client(server.url)
    result = await client.pipeline.get_or_create("main").send(
        "codeReview",
        {"file_path": "/home/user/repo/calc.py", "repo": str(buggy_repo), "vm_key": "rev-e2e"},
        wait=True,
        timeout=240,
    )
    assert result.status == "completed", result
    assert result.response["review"] == review
    assert result.response["fix_stop_reason"] == "end_turn"
    prompts = [str(r.body["messages"]) for r in fake_model.message_requests()]
    assert any(review in p and "Apply the following review feedback" in p for p in prompts)


async def test_task_runner_runs_tasks_one_at_a_time(host, fake_model):
    server = host()
    fake_model.script(*[Turn.text("task done")] * 3)
    client = create_client(server.url)
    runner = client.taskRunner.get_or_create("main")
    for i in range(3):
        assert (await runner.send("tasks", {"prompt": f"task number {i}"})).status == "queued"
    tasks = await eventually(
        runner.get_tasks, lambda t: len(t) == 3, timeout=240, interval=0.2, what="3 tasks"
    )
    assert [t["prompt"] for t in tasks] == [f"task number {i}" for i in range(3)]
    for earlier, later in itertools.pairwise(tasks):
        assert earlier["finished_at"] <= later["started_at"], (earlier, later)
    assert all(t["stop_reason"] == "end_turn" for t in tasks)


async def test_reviewer_answers_waiting_senders_and_times_out(host, fake_model):
    server = host()
    summary = "auth.py: the token check is fine"
    # The summary is the agent's final message: it writes no file (each run would
    # have its own, /home/user/review-<run id>.txt).
    fake_model.script(*[Turn.text(summary)] * 2, marker="Review this code")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        put = await http.put(
            "/vms/reviewer/files/home/user/src/auth.py", content=b"def check(t): return t\n"
        )
        assert put.status_code == 200, put.text
    client = create_client(server.url)
    reviewer = client.reviewer.get_or_create("main")
    answered = await reviewer.send(
        "review", {"file": "/home/user/src/auth.py"}, wait=True, timeout=240
    )
    assert answered.status == "completed"
    assert answered.response == {"summary": summary}
    hurried = await reviewer.send(
        "review", {"file": "/home/user/src/auth.py"}, wait=True, timeout=0.05
    )
    assert hurried.status == "timed_out"


async def test_fix_bug_reads_a_host_repository_only_inside_the_allowed_roots(
    host, fake_model, buggy_repo
):
    """With ``AGENTVM_REPO_ROOTS`` a raw HTTP caller may name a host path inside a
    root (no upload); the server's own files stay out of reach."""
    server = host(AGENTVM_REPO_ROOTS=str(buggy_repo.parent))
    fake_model.script(
        Turn.tool("edit", FIX_EDIT), Turn.text("Fixed."), marker="root-repo: add subtracts"
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        for stolen in ("/proc/self/environ", "/proc/self/cwd", str(buggy_repo.parent.parent)):
            refused = await http.post(
                "/actors/automator/main/queues/fixBug",
                json={"body": {"repo": stolen, "issue": "x"}},
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["metadata"]["field"] == "body.repo"
        sent = await http.post(
            "/actors/automator/main/queues/fixBug",
            json={
                "body": {
                    "repo": str(buggy_repo),
                    "issue": "root-repo: add subtracts",
                    "test_command": "sh test_calc.sh",
                    "vm_key": "fix-root",
                    "keep_vm": True,
                },
                "wait": True,
                "timeout_ms": 240_000,
            },
        )
        assert sent.status_code == 200, sent.text
        result = sent.json()["response"]
        vms = (await http.get("/actors", params={"name": "vm"})).json()["actors"]
    assert result["tests_exit_code"] == 0, result["test_output"]
    assert "+    return a + b" in result["diff"]
    # The refused requests made no vm: only the allowed run's.
    assert [a["key"] for a in vms] == [["fix-root"]]


async def test_code_review_reads_back_at_most_a_capped_review(host, fake_model, buggy_repo):
    """The agent (sandbox code) writes a huge review file; the host reads only its
    beginning into the workflow, the second prompt and the response."""
    server = host()
    huge = "python3 -c \"open('/home/user/review.md','w').write('R' * 3_000_000)\""
    fake_model.script(
        Turn.tool("bash", {"command": huge}), Turn.text("Written."), marker="Review the code at"
    )
    fake_model.script(Turn.text("Applied."), marker="Apply the following review feedback")
    client = create_client(server.url)
    result = await client.pipeline.get_or_create("main").send(
        "codeReview",
        {"file_path": "/home/user/repo/calc.py", "repo": str(buggy_repo), "vm_key": "rev-cap"},
        wait=True,
        timeout=240,
    )
    assert result.status == "completed", result
    review = result.response["review"]
    assert review.startswith("R" * 1000) and review.endswith("bytes]")
    assert len(review) < 40_000
