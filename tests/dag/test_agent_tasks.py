"""Agent tasks (orchestrator/dag/agent.py): ``run_agent`` in a real vm with the coding
agent and the fake model, and ``ctx.parallel`` / ``ctx.race`` of agent tasks in a
user orchestrator served next to the vm actor (real Docker, real SQLite)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from host.sandbox.backend import LABEL_HOST
from orchestrator.dag.agent import AgentTask, AgentTaskFailed, check_tasks, run_agent, task_names
from orchestrator.errors import InvalidRequest
from tests.dag.agent_tasks_app import runtime
from tests.support import eventually
from tests.support.docker import docker_client, remove_host
from tests.support.fake_anthropic import FakeAnthropic, Turn, tool_use

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def images() -> None:
    """The vm image (common + coding-agent) built before any test's deadline runs."""
    client = docker_client()
    from vm_images.builder import ensure_image

    ensure_image(["common", "coding-agent"], client=client)
    client.close()


@pytest.fixture
def host_id() -> Iterator[str]:
    hid = f"dag-{uuid.uuid4().hex[:8]}"
    yield hid
    client = docker.from_env()
    remove_host(client, hid)
    client.close()


@pytest.fixture
def fake_model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


def _runtime(tmp_path: Path, host_id: str) -> Any:
    return runtime(str(tmp_path / "host.db"), host_id)


@pytest.fixture
def model_env(fake_model: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> FakeAnthropic:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_model.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agent-tasks-test")
    return fake_model


def _never() -> bool:
    return False


async def test_run_agent_returns_text_tool_calls_and_usage(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    model_env.script(
        Turn.tool("write", {"path": "/home/user/out.txt", "content": "42\n"}),
        Turn.text("Wrote ", "the answer."),
        marker="write-the-answer",
    )
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        await client.vm.create("one")
        task = AgentTask(prompt="write-the-answer", check="grep -qx 42 /home/user/out.txt")
        result = await run_agent(client, "one", task, stopping=_never)
        assert result["status"] == "completed"
        assert result["text"] == "Wrote the answer."
        assert result["stop_reason"] == "end_turn"
        assert result["check"] == {"exit_code": 0, "output": ""}
        assert result["vm"] == "one"
        [call] = result["tool_calls"]
        assert call["status"] == "completed"
        assert call["input"]["path"] == "/home/user/out.txt"
        assert result["usage"]["outputTokens"] == 40  # two model calls of 20
        # The session was closed.
        assert [
            s for s in await client.vm.get("one").list_sessions() if s["status"] != "closed"
        ] == []


async def test_run_agent_fails_on_a_failed_check_and_on_a_model_error(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    model_env.script(Turn.text("I did nothing."), marker="do-nothing")
    model_env.script(Turn.fail(500, "api_error", "the model broke"), marker="model-breaks")
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        await client.vm.create("one")
        task = AgentTask(prompt="do-nothing", check="echo missing >&2; test -f /home/user/nope")
        with pytest.raises(AgentTaskFailed) as info:
            await run_agent(client, "one", task, stopping=_never)
        meta = info.value.metadata
        assert info.value.code == "step_failed" and info.value.group == "workflow"
        assert meta["stop_reason"] == "end_turn"
        assert meta["check_exit_code"] == 1
        assert "missing" in meta["check_output"]

        with pytest.raises(AgentTaskFailed) as info:
            await run_agent(client, "one", AgentTask(prompt="model-breaks"), stopping=_never)
        assert info.value.metadata["stop_reason"] != "end_turn"
        assert info.value.metadata["check_exit_code"] is None


async def test_run_agent_keeps_a_bounded_part_of_a_flooding_agent(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    """The agent (here driven by the model) answers with more than a step result may
    hold: 210 tool calls, one with a 20 KB input, and a 300 KB text."""
    big = "x" * 20_000
    calls = [
        tool_use("write", {"path": f"/home/user/f{i}.txt", "content": "1"}) for i in range(209)
    ]
    model_env.script(
        Turn.tools(tool_use("write", {"path": "/home/user/big.txt", "content": big}), *calls),
        Turn.text("y" * 300_000),
        marker="flood-the-host",
    )
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        await client.vm.create("one")
        result = await run_agent(client, "one", AgentTask(prompt="flood-the-host"), stopping=_never)
        assert result["text_truncated"] is True
        assert len(result["text"]) == 256 * 1024
        assert result["tool_calls_truncated"] is True
        assert len(result["tool_calls"]) == 200
        first = result["tool_calls"][0]["input"]
        assert isinstance(first, str) and len(first) < 4 * 1024 + 100
        assert len(json.dumps(result)) < 256 * 1024 + 200 * 4 * 1024


async def _task_vms(client: Any) -> list[str]:
    return sorted(i.key[0] for i in await client.vm.list() if i.key[0].startswith("task-"))


def _containers(host_id: str) -> int:
    client = docker.from_env()
    try:
        return len(client.containers.list(filters={"label": f"{LABEL_HOST}={host_id}"}))
    finally:
        client.close()


async def test_parallel_runs_tasks_in_order_one_at_a_time_in_forked_vms(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    for name in ("alpha", "beta", "gamma"):
        model_env.script(Turn.text(f"answer {name}"), marker=f"task-{name}")
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        source = await client.vm.create("source")
        await source.write_file("/home/user/seed.txt", b"seed\n")
        await source.checkpoint("base")
        tasks = [
            {
                "prompt": f"task-{name}",
                "name": name,
                "fork_from": "source@base",
                "check": "grep -qx seed seed.txt",
                "keep_vm": name == "gamma",
            }
            for name in ("alpha", "beta", "gamma")
        ]
        sent = await client.tasks.get_or_create("main").send(
            "jobs",
            {"kind": "parallel", "tasks": tasks, "max_concurrency": 1},
            wait=True,
            timeout=300,
        )
        assert sent.status == "completed", sent
        results = sent.response
        assert [r["text"] for r in results] == ["answer alpha", "answer beta", "answer gamma"]
        assert all(r["status"] == "completed" for r in results)
        assert all(r["check"] == {"exit_code": 0, "output": ""} for r in results)
        # One after another: each started after the one before it had finished.
        spans = sorted((r["started_at"], r["finished_at"]) for r in results)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start
        # Fresh vms are gone after their task, but the one with keep_vm.
        assert await _task_vms(client) == [results[2]["vm"]]
        assert len({r["vm"] for r in results}) == 3


async def test_parallel_fail_fast_cancels_the_rest(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    model_env.script(Turn.text("nothing done"), marker="task-fails")
    hang = model_env.gate()
    for name in ("one", "two"):
        model_env.script(Turn.text("never", wait_for=hang), marker=f"task-hangs-{name}")
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        tasks = [
            {"prompt": "task-hangs-one", "name": "one"},
            {"prompt": "task-fails", "name": "bad", "check": "false"},
            {"prompt": "task-hangs-two", "name": "two"},
        ]
        sent = await client.tasks.get_or_create("main").send(
            "jobs", {"kind": "parallel", "tasks": tasks, "fail_fast": True}, wait=True, timeout=300
        )
        assert sent.status == "completed", sent
        one, bad, two = sent.response
        assert bad["status"] == "failed"
        assert bad["check"]["exit_code"] == 1
        assert bad["error"]["code"] == "step_failed"
        assert one["status"] == two["status"] == "cancelled"
        assert await _task_vms(client) == []
        assert _containers(host_id) == 0


def _kill_9(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9`` of the host process and every process below it (nobody cleans up)."""
    victims = [proc.pid, *_descendants(proc.pid)]
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _descendants(pid: int) -> list[int]:
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


async def test_race_first_to_pass_wins_losers_cancelled_and_replayed_after_kill_9(
    images: None, tmp_path: Path, host_id: str, fake_model: FakeAnthropic
) -> None:
    """Three agents race: one ends first but fails its check, one passes, one hangs in
    the model. The passing one wins, the hanging one is cancelled; only the winner's
    vm is left. Then the host is killed with ``kill -9`` after the race was recorded;
    the restarted host replays the run to the same winner without prompting again."""
    win_gate, hang_gate = fake_model.gate(), fake_model.gate()
    fake_model.script(Turn.text("gave up"), marker="racer-quitter")
    fake_model.script(
        Turn.tool("write", {"path": "/home/user/won.txt", "content": "yes\n"}, wait_for=win_gate),
        Turn.text("finished"),
        marker="racer-winner",
    )
    fake_model.script(Turn.text("still thinking", wait_for=hang_gate), marker="racer-slow")
    check = "test -f /home/user/won.txt"
    body = {
        "kind": "race",
        "tasks": [
            {"prompt": "racer-quitter", "name": "quitter", "check": check},
            {"prompt": "racer-winner", "name": "winner", "check": check},
            {"prompt": "racer-slow", "name": "slow", "check": check},
        ],
        "announce": str(tmp_path / "race.json"),
        "gate": str(tmp_path / "gate"),
    }
    db, run_file = str(tmp_path / "host.db"), tmp_path / "run_id"
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": fake_model.url,
        "ANTHROPIC_API_KEY": "sk-ant-agent-tasks-test",
    }
    proc = _start_host(db, host_id, body, run_file, env)
    try:
        # The quitter's turn ends first (its check fails); then the winner may go on.
        await eventually(
            lambda: _async(lambda: len(fake_model.message_requests())),
            lambda n: n >= 3,
            timeout=180,
            interval=0.1,
            what="the three agents prompted",
        )
        await eventually(
            lambda: _async(lambda: _quitter_failed(db)),
            timeout=180,
            interval=0.1,
            what="the quitter's failed step",
        )
        win_gate.set()
        announced = tmp_path / "race.json"
        await eventually(
            lambda: _async(announced.exists), timeout=180, interval=0.1, what="the race's end"
        )
        raced = json.loads(announced.read_text())
        assert raced["winner"] == "winner"
        value = raced["value"]
        assert value["text"] == "finished" and value["check"]["exit_code"] == 0
        assert value["candidates"] == {
            "quitter": {"status": "failed", "error": value["candidates"]["quitter"]["error"]},
            "winner": {"status": "completed"},
            "slow": {"status": "cancelled"},
        }
        assert value["candidates"]["quitter"]["error"]["metadata"]["check_exit_code"] == 1
        # Only the winner's container is left (the losers' vms were destroyed).
        await eventually(
            lambda: _async(lambda: _containers(host_id)), lambda n: n == 1, timeout=60, what="vms"
        )
        prompts = len(fake_model.message_requests())
        _kill_9(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (tmp_path / "gate").write_text("open")
    run_id = int(run_file.read_text())
    async with runtime(db, host_id) as engine:
        client = engine.client()
        tasks = client.tasks.get("main")
        detail = await eventually(
            lambda: tasks.run(run_id),
            lambda d: d.status in ("completed", "failed"),
            timeout=180,
            interval=0.1,
            what="the replayed run",
        )
        assert detail.status == "completed", detail.error
        assert detail.result["winner"] == "winner"
        assert detail.result["value"]["vm"] == value["vm"]
        assert await _task_vms(client) == [value["vm"]]
    # The replay prompted no agent again.
    assert len(fake_model.message_requests()) == prompts


def _start_host(
    db: str, host_id: str, body: dict[str, Any], run_file: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """The host with the test orchestrator in its own process, sending ``body``."""
    args = [db, host_id, json.dumps(body), str(run_file)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.dag.agent_tasks_app", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )


async def _async(fn: Any) -> Any:
    return fn()


def _quitter_failed(db: str) -> bool:
    """The quitter's step is recorded as failed (read from the database directly)."""
    import sqlite3

    con = sqlite3.connect(db, timeout=5)
    try:
        rows = con.execute(
            "SELECT status FROM workflow_history WHERE path LIKE '%/quitter/agent'"
        ).fetchall()
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()
    return any(r[0] == "failed" for r in rows)


async def test_cancelling_the_run_cancels_the_prompts_and_destroys_the_task_vms(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    hang = model_env.gate()
    for name in ("one", "two"):
        model_env.script(Turn.text("never", wait_for=hang), marker=f"task-stuck-{name}")
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        tasks = [{"prompt": f"task-stuck-{n}", "name": n} for n in ("one", "two")]
        jobs = client.tasks.get_or_create("main")
        sent = await jobs.send("jobs", {"kind": "parallel", "tasks": tasks})
        assert sent.message_id is not None
        await eventually(
            lambda: _async(lambda: len(model_env.message_requests())),
            lambda n: n >= 2,
            timeout=180,
            interval=0.1,
            what="both agents prompting",
        )
        assert len(await _task_vms(client)) == 2
        cancelled = await jobs.cancel_run(sent.message_id)
        assert cancelled.status == "cancelled"
        await eventually(lambda: _task_vms(client), lambda v: v == [], timeout=120, what="vms")
        await eventually(
            lambda: _async(lambda: _containers(host_id)), lambda n: n == 0, timeout=60, what="ps"
        )


async def test_a_host_stopping_keeps_the_task_vm_and_the_run_resumes_after_restart(
    images: None, tmp_path: Path, host_id: str, model_env: FakeAnthropic
) -> None:
    """Stopping the host mid-task is not a cancel: the task's vm is left alone, and
    after the restart the run goes on (the interrupted attempt runs again)."""
    hang = model_env.gate()
    model_env.script(Turn.text("interrupted", wait_for=hang), Turn.text("done"), marker="task-long")
    body = {"kind": "parallel", "tasks": [{"prompt": "task-long", "name": "long"}]}
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        sent = await client.tasks.get_or_create("main").send("jobs", body)
        run_id = sent.message_id
        assert run_id is not None
        await eventually(
            lambda: _async(lambda: len(model_env.message_requests())),
            lambda n: n >= 1,
            timeout=180,
            interval=0.1,
            what="the agent prompting",
        )
        [vm] = await _task_vms(client)
    # The host stopped: the task's vm was not destroyed.
    assert _containers(host_id) == 1
    async with _runtime(tmp_path, host_id) as engine:
        client = engine.client()
        detail = await eventually(
            lambda: client.tasks.get("main").run(run_id),
            lambda d: d.status in ("completed", "failed"),
            timeout=240,
            interval=0.2,
            what="the resumed run",
        )
        assert detail.status == "completed", detail.error
        [result] = detail.result
        assert result["status"] == "completed" and result["text"] == "done"
        assert result["vm"] == vm
        assert await _task_vms(client) == []


@pytest.mark.parametrize(
    ("tasks", "field"),
    [
        ([], "tasks"),
        ("do it", "tasks"),
        ([{"prompt": "a"}, 3], "tasks.1"),
        ([{"prompt": ""}], "tasks.0.prompt"),
        ([{"prompt": "a", "fork_from": "no-checkpoint"}], "tasks.0.fork_from"),
        ([{"prompt": "a", "name": "a/b"}], "tasks.0.name"),
        ([{"prompt": "a", "colour": "red"}], "tasks.0.colour"),
        ([{"prompt": "a", "timeout": 0}], "tasks.0.timeout"),
    ],
)
def test_bad_agent_tasks_are_refused_naming_the_field(tasks: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_tasks(tasks)
    assert info.value.metadata["field"] == field


def test_task_names_default_and_must_differ() -> None:
    tasks = check_tasks([{"prompt": "a"}, AgentTask(prompt="b", name="bee"), {"prompt": "c"}])
    assert task_names(tasks) == ["task-0", "bee", "task-2"]
    with pytest.raises(InvalidRequest) as info:
        task_names(check_tasks([{"prompt": "a", "name": "x"}, {"prompt": "b", "name": "x"}]))
    assert info.value.metadata["field"] == "tasks.1.name"
