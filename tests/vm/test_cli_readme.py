"""The README's ``agentvm vm ...`` lines, run as written against the real host.

A vm ``fix-7`` with a git repository at /home/user/repo (as the fixBug orchestrator
leaves it: a commit, then an edit), then each README line whose command is
``agentvm vm`` is run as a real subprocess: ``ls`` prints ``ls -l`` lines (modes as
``-rw-r--r--``, dates), ``cat`` the file, and ``exec -- git diff`` runs in the
repository without a ``--cwd``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from tests.server.live import ROOT, LiveServer, agentvm, start_server
from tests.support.docker import remove_host

from .conftest import HOST_ID

CALC = "def add(a, b):\n    return a - b\n"
FIXED = CALC.replace("a - b", "a + b")


@pytest.fixture(scope="module")
def vm_server(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real host (vm actor on Docker) in a subprocess, one for the module (its tests
    use vm keys of their own); its containers removed after."""
    host_id = f"{HOST_ID}-readme"
    env = {"AGENTVM_HOST_ID": host_id, "AGENTVM_WARM_POOL": "0"}
    db = tmp_path_factory.mktemp("readme") / "host.db"
    server = start_server(db, env=env, registry=None, deadline_s=120)
    yield server
    server.stop()
    client = docker.from_env()
    remove_host(client, host_id)
    client.close()


def _readme_vm_lines() -> list[list[str]]:
    """The README's ``agentvm vm`` command lines, comments cut off, as argv."""
    lines = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("agentvm vm "):
            lines.append(shlex.split(line, comments=True)[1:])
    return lines


def _action(http: httpx.Client, key: str, name: str, *args: Any) -> Any:
    resp = http.post(f"/actors/vm/{key}/actions/{name}", json={"args": list(args)})
    assert resp.status_code == 200, resp.text
    return resp.json()["output"]


def test_readme_vm_lines_work_as_written(vm_server: LiveServer) -> None:
    lines = _readme_vm_lines()
    assert [argv[:2] for argv in lines] == [["vm", "ls"], ["vm", "cat"], ["vm", "exec"]]
    git = "git -c user.name=t -c user.email=t@example.com"
    with httpx.Client(base_url=vm_server.url, timeout=120) as http:
        _action(http, "fix-7", "mkdir", "/home/user/repo", {"parents": True})
        _action(http, "fix-7", "write_file", "/home/user/repo/calc.py", CALC)
        made = _action(
            http,
            "fix-7",
            "exec",
            f"git init -q . && git add calc.py && {git} commit -qm base",
            {"cwd": "/home/user/repo"},
        )
        assert made["exit_code"] == 0, made
        _action(http, "fix-7", "write_file", "/home/user/repo/calc.py", FIXED)
    env = {"AGENTVM_URL": vm_server.url}
    results = {argv[1]: agentvm(*argv, env=env) for argv in lines}
    for verb, res in results.items():
        assert res.returncode == 0, (verb, res.stderr)

    listing = results["ls"].stdout.decode()
    # ls -l: mode, size, modification date and time, name.
    row = re.compile(r"^([-dl?][-rwx]{9}) +(\d+) (\d{4}-\d\d-\d\d \d\d:\d\d) (.+)$")
    rows = {m.group(4): m for m in map(row.match, listing.splitlines()) if m}
    assert set(rows) == {"calc.py", ".git"}, listing
    assert rows["calc.py"].group(1) == "-rw-r--r--" and rows["calc.py"].group(2) == str(len(FIXED))
    assert rows[".git"].group(1).startswith("d")

    assert results["cat"].stdout.decode() == FIXED
    diff = results["exec"].stdout.decode()
    assert "-    return a - b" in diff and "+    return a + b" in diff


def test_exec_cwd_option_and_default(vm_server: LiveServer) -> None:
    env = {"AGENTVM_URL": vm_server.url}
    here = agentvm("vm", "exec", "plain", "--", "pwd", env=env)
    assert here.returncode == 0, here.stderr
    assert here.stdout == b"/home/user\n"  # no repository: the vm's default
    there = agentvm("vm", "exec", "plain", "--cwd", "/tmp", "--", "pwd", env=env)
    assert there.stdout == b"/tmp\n"
    agentvm("vm", "exec", "plain", "--", "mkdir -p repo", env=env)
    inside = agentvm("vm", "exec", "plain", "--", "pwd", env=env)
    assert inside.stdout == b"/home/user/repo\n"
    missing = agentvm("vm", "exec", "plain", "--cwd", "/nope", "--", "pwd", env=env)
    assert missing.returncode != 0
