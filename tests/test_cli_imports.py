"""The CLI starts fast: ``agentvm --help`` and ``agentvm ps`` load no heavy module.

No timing thresholds (``bench/cli.py`` measures the time): each command runs in a
subprocess that reports which modules it imported, and the modules that cost the
start-up time (the server, Docker, the engine, httpx, rich) must not be among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host import cli, cli_common
from orchestrator.keys import decode_key_path, encode_key_path
from orchestrator.remote import DEFAULT_URL
from tests.server.live import ROOT, LiveServer, start_server

# Imported by none of the light commands; each costs tens to hundreds of milliseconds.
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "docker",
    "pydantic",
    "httpx",
    "rich",
    "asyncio",
    "orchestrator",
    "orchestrator.engine",
    "host.server",
    "host.app",
    "host.cli_runs",
    "host.cli_watch",
    "host.cli_vm",
    "host.cli_workflow",
    "vm_images",
)

_PROBE = """
import json, sys
sys.argv = ["agentvm", *json.loads(sys.argv[1])]
from host.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
sys.exit(code)
"""


def _probe(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI with ``args`` in a fresh interpreter; its output and its modules."""
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )
    err, _, modules = res.stderr.rpartition("\nMODULES ")
    assert modules, res.stderr
    res.stderr = err
    return res, set(json.loads(modules))


def _heavy(modules: set[str], allow: tuple[str, ...] = ()) -> list[str]:
    heavy = [h for h in HEAVY if h not in allow]
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


# Allowed when a command runs (none: host.cli keeps typer's pydantic conversion off
# for str/bool parameters; a typer whose internals changed would bring it back).
RUNNING: tuple[str, ...] = ()


def test_help_loads_no_heavy_module() -> None:
    res, modules = _probe("--help")
    assert res.returncode == 0, res.stderr
    assert _heavy(modules) == []
    listed = [line.split()[0] for line in res.stdout.split("Commands:")[1].splitlines() if line]
    assert listed == list(cli.ORDER)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("cli") / "cli.db")
    yield live
    live.stop()


def test_ps_loads_no_heavy_module(server: LiveServer) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "host.cli", "call", "vm", "a\x1b[31m,b", "readdir", "/x"],
        cwd=ROOT,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "AGENTVM_URL": server.url},
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    res, modules = _probe("ps", "--url", server.url)
    assert res.returncode == 0, res.stderr
    assert _heavy(modules, RUNNING) == []
    assert res.stdout.startswith("actors\nname")
    assert "sandboxes" in res.stdout
    # An actor key written by anyone is printed with its control characters escaped.
    assert "\x1b" not in res.stdout and "a\\x1b[31m,b" in res.stdout
    as_json, modules = _probe("ps", "--url", server.url, "--json")
    assert _heavy(modules, RUNNING) == []
    actors = json.loads(as_json.stdout)["actors"]
    assert {"name": "vm", "key": ["a\x1b[31m", "b"]}.items() <= {
        k: v for a in actors if a["name"] == "vm" for k, v in a.items()
    }.items()


def test_ps_reports_an_unreachable_server_and_a_bad_url() -> None:
    res, modules = _probe("ps", "--url", "http://127.0.0.1:9")
    assert res.returncode == 1 and "cannot reach agentvm at http://127.0.0.1:9" in res.stderr
    assert _heavy(modules, RUNNING) == []
    res, _ = _probe("ps", "--url", "ftp://example.com")
    assert res.returncode == 2 and "--url must be an http(s) URL" in res.stderr


def test_lazy_commands_are_listed_with_their_own_help() -> None:
    """The one-line helps ``--help`` shows without loading a command are its own."""
    for name, (_, short) in cli.LAZY_COMMANDS.items():
        real = cli.load_lazy(name)
        assert real.get_short_help_str(limit=500) == short, name
        # Built as a part of the app, not as an app of its own (no completion options).
        assert not [p.name for p in real.params if "completion" in (p.name or "")], name


def test_the_light_helpers_agree_with_the_orchestrator() -> None:
    assert cli_common.DEFAULT == DEFAULT_URL
    for key in [("main",), ("a,b", "c/d"), ("ünï", "%2C", " x "), ("",)]:
        encoded = cli_common.encode_key(key)
        assert encoded == encode_key_path(key)
        if encoded:
            assert cli_common.decode_key(encoded) == decode_key_path(encoded) == key


def test_the_entry_point_is_host_cli_main() -> None:
    text = (Path(ROOT) / "pyproject.toml").read_text()
    assert 'agentvm = "host.cli:main"' in text
