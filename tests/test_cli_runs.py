"""``agentvm runs|run|cancel|retry|watch|apply`` as real subprocesses against a live
server running the run-queue actors of tests/cli_runs_registry.py."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.live import ROOT, LiveServer, agentvm, start_server

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("cli-runs") / "agentvm.db"
    live = start_server(db, registry="tests.cli_runs_registry:build")
    yield live
    assert live.stop() == 0


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    return request.node.name


def cli(server: LiveServer, *args: str, env: dict[str, str] | None = None):
    return agentvm(*args, env={"AGENTVM_URL": server.url, **(env or {})})


def send(http: httpx.Client, actor: str, key: str, q: str, body: Any) -> int:
    resp = http.post(f"/actors/{actor}/{key}/queues/{q}", json={"body": body})
    assert resp.status_code == 200, resp.text
    return int(resp.json()["message_id"])


def get_run(http: httpx.Client, actor: str, key: str, rid: int) -> dict[str, Any]:
    resp = http.get(f"/actors/{actor}/{key}/runs/{rid}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def eventually(probe: Any, timeout: float = 60) -> Any:
    """Poll ``probe`` (which asserts) until it passes; the last failure past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return probe()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def wait_status(http: httpx.Client, actor: str, key: str, rid: int, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        run = get_run(http, actor, key, rid)
        assert run["status"] == status, run
        return run

    return eventually(check, timeout=60)


def test_runs_run_retry_and_errors(
    server: LiveServer, http: httpx.Client, unique: str, tmp_path: Path
) -> None:
    ok = send(http, "jobs", unique, "tasks", {"n": 2})
    need = tmp_path / "need"
    log = tmp_path / "double.log"
    bad = send(http, "jobs", unique, "tasks", {"n": 3, "need": str(need), "log": str(log)})
    wait_status(http, "jobs", unique, ok, "completed")
    wait_status(http, "jobs", unique, bad, "failed")

    table = cli(server, "runs", "jobs", unique)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert str(ok) in text and str(bad) in text and "tasks" in text
    assert "completed" in text and "failed" in text and "missing" in text

    failed = json.loads(cli(server, "runs", "jobs", unique, "--status", "failed", "--json").stdout)
    assert [r["run_id"] for r in failed["runs"]] == [bad]
    across = cli(server, "runs", "--all", "--status", "failed", "--json")
    assert across.returncode == 0, across.stderr
    assert any(r["run_id"] == bad for r in json.loads(across.stdout)["runs"])
    usage = cli(server, "runs")
    assert usage.returncode == 2 and b"--all" in usage.stderr

    shown = cli(server, "run", "jobs", unique, str(ok))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert "double" in out and "completed" in out and '"doubled": 4' in out
    shown_bad = cli(server, "run", "jobs", unique, str(bad))
    assert shown_bad.returncode == 1
    assert "check" in shown_bad.stdout.decode() and "missing" in shown_bad.stdout.decode()
    as_json = json.loads(cli(server, "run", "jobs", unique, str(ok), "--json").stdout)
    assert as_json["result"] == {"doubled": 4} and as_json["history"]

    # Retry after fixing the cause: "double" is replayed, not run again.
    need.write_text("here")
    retried = cli(server, "retry", "jobs", unique, str(bad))
    assert retried.returncode == 0, retried.stderr
    assert f"run {bad}:" in retried.stdout.decode()
    done = wait_status(http, "jobs", unique, bad, "completed")
    assert done["result"] == {"doubled": 6}
    assert log.read_text() == "double\n"

    # The server's errors, named, exit code 1.
    for args, code in [
        (("cancel", "jobs", unique, str(ok)), b"run/not_cancellable"),
        (("retry", "jobs", unique, str(ok)), b"run/not_retryable"),
        (("run", "jobs", unique, "999999"), b"not_found"),
        (("cancel", "jobs", unique, "999999"), b"not_found"),
    ]:
        res = cli(server, *args)
        assert res.returncode == 1 and code in res.stderr, (args, res.stderr)
    assert cli(server, "run", "jobs", unique, "abc").returncode == 2

    # `agentvm send --wait` to a run queue: a failed run is an error, exit 1.
    body = json.dumps({"n": 1, "need": str(tmp_path / "absent")})
    sent = cli(server, "send", "jobs", unique, "tasks", body, "--wait", "--timeout", "60")
    assert sent.returncode == 1, sent.stderr
    assert b"failed" in sent.stderr and b"missing" in sent.stderr


def test_cancel_running_and_queued(
    server: LiveServer, http: httpx.Client, unique: str, tmp_path: Path
) -> None:
    gate = str(tmp_path / "never")
    first = send(http, "jobs", unique, "tasks", {"n": 1, "gate": gate})
    wait_status(http, "jobs", unique, first, "running")
    second = send(http, "jobs", unique, "tasks", {"n": 2})  # serial queue: waits
    wait_status(http, "jobs", unique, second, "queued")

    res = cli(server, "cancel", "jobs", unique, str(second))
    assert res.returncode == 0, res.stderr
    assert f"run {second}: cancelled" in res.stdout.decode()
    res = cli(server, "cancel", "jobs", unique, str(first))
    assert res.returncode == 0, res.stderr
    wait_status(http, "jobs", unique, first, "cancelled")
    listed = json.loads(
        cli(server, "runs", "jobs", unique, "--status", "cancelled", "--json").stdout
    )
    assert sorted(r["run_id"] for r in listed["runs"]) == sorted([first, second])


class Watch:
    """``agentvm watch`` as a subprocess whose stdout is read line by line."""

    def __init__(self, server: LiveServer, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.cli", "watch", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200", "AGENTVM_URL": server.url},
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.seen = b""
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, text: bytes, deadline_s: float = 60) -> None:
        deadline = time.monotonic() + deadline_s
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"never printed {text!r}: {self.seen!r}"
            try:
                self.seen += self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                assert self.proc.poll() is None or not self.lines.empty(), self.seen

    def finish(self) -> tuple[int, bytes, bytes]:
        rc = self.proc.wait(timeout=60)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.pump.join(timeout=30)  # stdout is at its end: the process exited
        while not self.lines.empty():
            self.seen += self.lines.get_nowait()
        return rc, self.seen, err


def _session_events(sid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def update(u: dict[str, Any]) -> dict[str, Any]:
        return {"session_id": sid, "kind": "update", "data": u}

    def chunk(text: str) -> dict[str, Any]:
        return update(
            {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
        )

    early = [
        {"session_id": sid, "kind": "prompt", "data": {"text": "fix the failing test"}},
        chunk("Looking at the bug "),
        # Hostile agent text: a terminal escape (set the window title) and rich markup.
        chunk("in calc.py \x1b]0;pwned\x07 [red]not markup[/red]"),
        update(
            {
                "sessionUpdate": "tool_call",
                "toolCallId": "t1",
                "title": "Edit calc.py",
                "kind": "edit",
                "status": "pending",
                "rawInput": {"path": "calc.py"},
            }
        ),
    ]
    late = [
        update(
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": "t1",
                "status": "completed",
                "content": [
                    {
                        "type": "diff",
                        "path": "calc.py",
                        "oldText": "def add(a, b):\n    return a - b\n",
                        "newText": "def add(a, b):\n    return a + b\n",
                    }
                ],
            }
        ),
        chunk("Fixed it."),
        {"session_id": sid, "kind": "prompt_end", "data": {"stop_reason": "end_turn"}},
    ]
    return early, late


def test_watch_streams_steps_and_session_events(
    server: LiveServer, http: httpx.Client, unique: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    early, late = _session_events("sess_1")
    vm_key = f"{unique}-vm"
    body = {"vm": vm_key, "early": early, "late": late, "gate": str(gate)}
    rid = send(http, "fixer", unique, "fix", body)

    def early_done() -> None:
        steps = {e["path"]: e["status"] for e in get_run(http, "fixer", unique, rid)["history"]}
        assert any(p.endswith("early") and s == "completed" for p, s in steps.items()), steps

    eventually(early_done, timeout=60)
    # Started mid-run: the early session events come from the vm's stored events,
    # the late ones live from its broadcasts.
    watch = Watch(server, "fixer", unique, str(rid))
    watch.until(b"not markup")
    gate.write_text("open")
    rc, out, err = watch.finish()
    text = out.decode()
    assert rc == 0, (out, err)
    assert f"run {rid}" in text and vm_key in text
    assert "fix the failing test" in text
    assert "Looking at the bug in calc.py" in text  # chunks joined
    assert "Edit calc.py" in text and "(edit)" in text
    assert "-    return a - b" in text and "+    return a + b" in text
    assert "Fixed it." in text and "end_turn" in text
    assert "late" in text and "completed" in text
    assert '"fixed": true' in text and "<350 characters>" in text  # the patch is summarised
    # The agent's escape sequence and markup reach the terminal inert.
    assert b"\x1b" not in out and b"\x07" not in out
    assert "\\x1b]0;pwned\\x07" in text and "[red]not markup[/red]" in text
    assert text.count("Looking at the bug") == 1  # backfill and live stream de-duplicated


def test_watch_a_failed_run_exits_1(
    server: LiveServer, http: httpx.Client, unique: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.write_text("open")
    early, late = _session_events("sess_2")
    body = {"vm": f"{unique}-vm", "early": early, "late": late, "gate": str(gate), "fail": "boom"}
    rid = send(http, "fixer", unique, "fix", body)
    wait_status(http, "fixer", unique, rid, "failed")
    rc, out, err = Watch(server, "fixer", unique, str(rid)).finish()
    assert rc == 1, (out, err)
    assert b"failed" in out and b"boom" in out
    missing = cli(server, "watch", "fixer", f"{unique}-none", "1")
    assert missing.returncode == 1 and b"not_found" in missing.stderr


def _git(repo: Path, *args: str, input: bytes | None = None) -> str:
    res = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
        check=True,
    )
    return res.stdout.decode()


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, str]:
    """A clone of a project with a bug, and a ``git format-patch`` of its fix."""
    origin = tmp_path / "origin"
    origin.mkdir()
    _git(origin, "init", "-q", "-b", "main")
    (origin / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    _git(origin, "add", ".")
    _git(origin, "commit", "-q", "-m", "calc")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    (origin / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    _git(origin, "commit", "-q", "-am", "fix add")
    return clone, _git(origin, "format-patch", "-1", "--stdout")


def test_apply_a_runs_patch(
    server: LiveServer, http: httpx.Client, unique: str, tmp_path: Path, repos: tuple[Path, str]
) -> None:
    clone, patch = repos
    rid = send(http, "patcher", unique, "fixes", {"patch": patch})
    wait_status(http, "patcher", unique, rid, "completed")
    args = ("--actor", "patcher", "--key", unique)

    # A clone where the same lines changed differently: refused, left as it was.
    other = tmp_path / "other"
    _git(tmp_path, "clone", "-q", str(clone), str(other))
    (other / "calc.py").write_text("def add(a, b):\n    return b - a\n")
    _git(other, "commit", "-q", "-am", "other change")
    head = _git(other, "rev-parse", "HEAD")
    res = cli(server, "apply", str(rid), *args, "--repo", str(other), env=GIT_ENV)
    assert res.returncode == 1, res.stdout
    assert b"does not apply" in res.stderr and b"calc.py" in res.stdout + res.stderr
    assert _git(other, "rev-parse", "HEAD") == head
    assert _git(other, "status", "--porcelain") == ""
    assert not (other / ".git" / "rebase-apply").exists()

    res = cli(server, "apply", str(rid), *args, "--repo", str(clone), env=GIT_ENV)
    assert res.returncode == 0, res.stderr
    assert b"fix add" in res.stdout
    assert (clone / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert _git(clone, "log", "-1", "--format=%s").strip() == "fix add"

    plain = tmp_path / "plain"
    plain.mkdir()
    res = cli(server, "apply", str(rid), *args, "--repo", str(plain))
    assert res.returncode == 1 and b"not a git repository" in res.stderr

    none = send(http, "patcher", unique, "fixes", {})
    wait_status(http, "patcher", unique, none, "completed")
    res = cli(server, "apply", str(none), *args, "--repo", str(clone))
    assert res.returncode == 1 and b"run/no_patch" in res.stderr


# --- the real thing: a fixBug in a Docker sandbox, watched and applied ------------------

from tests.e2e.conftest import (  # noqa: E402 (fixtures of the real host, for the test below)
    buggy_repo,  # noqa: F401
    e2e_images,  # noqa: F401
    fake_model,  # noqa: F401
    host,  # noqa: F401
    host_id,  # noqa: F401
)
from tests.support.fake_anthropic import FakeAnthropic, Turn  # noqa: E402


@pytest.mark.docker
def test_watch_and_apply_a_real_fix_bug(
    host: Any,  # noqa: F811
    fake_model: FakeAnthropic,  # noqa: F811
    buggy_repo: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The agent in the sandbox is the attacker: its message carries a terminal
    escape sequence, which ``watch`` must print inert."""
    server = host()
    gate = fake_model.gate()
    fake_model.script(
        Turn.tool(
            "edit",
            {"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"},
            wait_for=gate,
        ),
        Turn.text("Fixed \x1b]0;pwned\x07 add() now adds."),
        marker="add-subtracts",
    )
    sent = agentvm(
        "send",
        "automator",
        "main",
        "fixBug",
        json.dumps(
            {
                "repo": str(buggy_repo),
                "issue": "add-subtracts: add(2, 3) returns -1",
                "test_command": "sh test_calc.sh",
            }
        ),
        "--json",
        env={"AGENTVM_URL": server.url},
    )
    assert sent.returncode == 0, sent.stderr
    rid = json.loads(sent.stdout)["message_id"]
    fake_model.wait_for_requests(1, 180)  # the agent is mid-turn

    watch = Watch(server, "automator", "main", str(rid))
    watch.until(b"prompt:")  # the events so far, from the vm's store
    gate.set()
    rc, out, err = watch.finish()
    text = out.decode()
    assert rc == 0, (out, err)
    assert f"fix-{rid}" in text  # the run's vm
    assert "(edit)" in text and "+    return a + b" in text
    assert "end_turn" in text and '"fixed": true' in text
    assert b"\x1b" not in out and "\\x1b]0;pwned\\x07" in text

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(buggy_repo), str(clone))
    applied = agentvm(
        "apply", str(rid), "--repo", str(clone), env={"AGENTVM_URL": server.url, **GIT_ENV}
    )
    assert applied.returncode == 0, applied.stderr
    assert (clone / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert _git(clone, "status", "--porcelain") == ""
