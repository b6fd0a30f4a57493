"""The CLI's client commands as real subprocesses against the live server."""

from __future__ import annotations

import json

from tests.server.live import LiveServer, agentvm


def _run(server: LiveServer, *args: str, input: str | bytes | None = None):
    return agentvm(*args, input=input, env={"AGENTVM_URL": server.url})


def test_call_and_send(server: LiveServer, unique: str) -> None:
    res = _run(server, "call", "counter", unique, "increment", "5")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == b"5"
    res = _run(server, "call", "counter", unique, "echo", '{"a": [1, 2]}', "--json")
    assert json.loads(res.stdout) == {"output": {"a": [1, 2]}}
    res = _run(server, "call", "counter", unique, "echo", "plain words")
    assert res.stdout.strip() == b"plain words"
    res = _run(
        server, "send", "worker", unique, "requests", '{"n": 6}', "--wait", "--timeout", "30"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"doubled": 12}
    res = _run(server, "send", "worker", unique, "parked", '{"n": 1}', "--json")
    assert json.loads(res.stdout)["status"] == "queued"
    res = _run(server, "send", "worker", unique, "parked", "{}", "--wait", "--timeout", "0.05")
    assert res.returncode == 3 and b"timed out" in res.stderr


def test_errors_are_reported(server: LiveServer, unique: str) -> None:
    res = _run(server, "call", "counter", unique, "nope")
    assert res.returncode == 1
    assert b"action/not_found" in res.stderr and b"nope" in res.stderr
    res = agentvm("ps", "--url", "http://127.0.0.1:9")
    assert res.returncode == 1 and b"cannot reach agentvm" in res.stderr


def test_ps_and_history(server: LiveServer, unique: str) -> None:
    _run(server, "send", "worker", unique, "requests", '{"n": 1}', "--wait")
    _run(server, "vm", "put", unique, "/tmp/x", input=b"x")
    res = _run(server, "ps", "--json")
    actors = json.loads(res.stdout)["actors"]
    assert any(a["name"] == "worker" and a["key"] == [unique] for a in actors)
    table = _run(server, "ps")
    assert b"worker" in table.stdout and b"sandboxes" in table.stdout
    tree = _run(server, "history", "worker", unique)
    assert tree.returncode == 0, tree.stderr
    assert b"requests-loop" in tree.stdout and b"double" in tree.stdout
    assert b"completed" in tree.stdout
    as_json = json.loads(_run(server, "history", "worker", unique, "--json").stdout)
    assert as_json["is_workflow"] is True
    missing = _run(server, "history", "worker", f"{unique}-none")
    assert missing.returncode == 1 and b"not_found" in missing.stderr


def test_vm_commands(server: LiveServer, unique: str) -> None:
    data = bytes(range(256))
    res = _run(server, "vm", "put", unique, "/home/user/a.bin", input=data)
    assert res.returncode == 0 and b"wrote 256 bytes" in res.stderr
    assert _run(server, "vm", "cat", unique, "/home/user/a.bin").stdout == data
    listing = _run(server, "vm", "ls", unique, "/home/user", "--json")
    assert json.loads(listing.stdout)["entries"] == [{"name": "a.bin", "size": 256, "type": "file"}]
    assert b"a.bin" in _run(server, "vm", "ls", unique, "/home/user").stdout
    res = _run(server, "vm", "exec", unique, "--", "ls", "-la", "my dir")
    assert res.returncode == 0 and res.stdout == b"/home/user$ ls -la 'my dir'\n"
    res = _run(server, "vm", "exec", unique, "--cwd", "/tmp", "--", "exit 7")
    assert res.returncode == 7 and res.stderr == b"bye\n"
    missing = _run(server, "vm", "cat", unique, "/nope")
    assert missing.returncode == 1 and b"file_not_found" in missing.stderr


def test_vm_shell_keeps_cwd(server: LiveServer, unique: str) -> None:
    script = "pwd\ncd repo\ngit status\ncd ../other\nls\nexit\necho never\n"
    res = _run(server, "vm", "shell", unique, input=script)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == [
        "/home/user$ pwd",
        "/home/user/repo$ git status",
        "/home/user/other$ ls",
    ]
