"""The agent-type registry: built-ins from bundles, more from an AGENTVM_AGENTS file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_images import bundles
from vm_images.agents import (
    AGENTS_ENV,
    AgentConfigError,
    agent_command,
    agent_types,
    get_agent,
    registry_json,
)
from vm_images.builder import _install_npm, image_tag, render_dockerfile

ROOT = Path(__file__).resolve().parents[2]

CLAUDE_TOML = """
[agents.claude-code]
command = ["claude-agent-acp"]
bundles = ["zz-claude-acp"]
env = { CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1" }
description = "Claude Code over ACP"

[bundles.zz-claude-acp]
description = "Zed's Claude Code ACP adapter (npm)"
apt = ["nodejs", "npm"]
npm = ["@zed-industries/claude-agent-acp@0.23.1"]
"""


@pytest.fixture(autouse=True)
def clean_bundles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AGENTS_ENV, raising=False)
    before = dict(bundles.BUNDLES)
    yield
    bundles.BUNDLES.clear()
    bundles.BUNDLES.update(before)


def test_the_coding_agent_is_built_in() -> None:
    agent = get_agent("coding-agent")
    # The execute-only interpreter copy: the agent starts non-dumpable (docs/sessions.md).
    argv = [bundles.AGENT_PYTHON, "-I", "-m", "coding_agent"]
    assert agent.command == tuple(argv)
    assert agent.bundles == ("coding-agent",)
    assert agent.source == "builtin"
    assert agent_command("coding-agent") == argv
    assert registry_json()["coding-agent"]["command"] == argv
    bundle = bundles.BUNDLES["coding-agent"]
    assert any(req.startswith("anthropic==") for req in bundle.pip)
    assert "coding_agent" in render_dockerfile([bundle])


def test_unknown_agent_types_name_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: claude-code, coding-agent, opencode, pi"):
        get_agent("nope")


def test_the_real_agents_are_builtin_with_node_and_offline_env() -> None:
    """pi, Claude Code and OpenCode are registered under the names users know; the node
    ones need the node bundle (resolve() adds it) and run with the execute-only node;
    their env switches off telemetry and update checks (docs/agents.md)."""
    pi, claude, opencode = get_agent("pi"), get_agent("claude-code"), get_agent("opencode")
    assert pi.bundles == ("node", "pi") and claude.bundles == ("node", "claude-code")
    assert opencode.bundles == ("opencode",)
    assert pi.command[0] == claude.command[0] == bundles.AGENT_NODE
    assert opencode.command == (bundles.AGENT_OPENCODE, "acp")
    assert [b.name for b in bundles.resolve(["pi"])] == ["node", "pi", "supervisor"]
    assert pi.env["PI_OFFLINE"] == "1" and pi.env["npm_config_offline"] == "true"
    assert claude.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert opencode.env["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
    assert "ANTHROPIC_API_KEY" not in {**pi.env, **claude.env, **opencode.env}
    # images with and without Node.js are different tags
    assert image_tag(["common"]) != image_tag(["common", "node"]) != image_tag(["common", "pi"])


def test_a_toml_file_adds_an_agent_and_its_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(CLAUDE_TOML)
    monkeypatch.setenv(AGENTS_ENV, str(path))
    agents = agent_types()
    assert set(agents) == {"coding-agent", "claude-code", "pi", "opencode"}
    claude = agents["claude-code"]
    assert claude.command == ("claude-agent-acp",)
    assert claude.env == {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert claude.source == str(path)
    bundle = bundles.BUNDLES["zz-claude-acp"]
    assert bundle.npm == ("@zed-industries/claude-agent-acp@0.23.1",)
    assert bundle.apt == ("nodejs", "npm")
    assert "COPY zz-claude-acp/npm /opt/agentvm/npm/zz-claude-acp" in bundle.dockerfile
    # the image for it is addressable (built on demand by ensure_image)
    assert image_tag(["common", "zz-claude-acp"]).startswith("agentvm-sandbox:")


def test_a_json_file_works_the_same_and_can_override(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(
        json.dumps(
            {
                "agents": {
                    "coding-agent": {
                        "command": ["python3", "-I", "-m", "coding_agent"],
                        "bundles": ["coding-agent"],
                        "env": {"AGENTVM_MODEL": "claude-opus-4-1"},
                    },
                    "pyagent": {"command": "my-agent", "bundles": ["zz-py"]},
                },
                "bundles": {"zz-py": {"pip": ["six==1.16.0"]}},
            }
        )
    )
    agents = agent_types(path)
    assert agents["coding-agent"].env == {"AGENTVM_MODEL": "claude-opus-4-1"}
    assert agents["pyagent"].command == ("my-agent",)
    assert "COPY zz-py/wheels" in bundles.BUNDLES["zz-py"].dockerfile


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agents.x]\ncommand = []\n", "command is empty"),
        ("[agents.x]\ncommand = ['a']\nbundles = ['missing']\n", "unknown bundle"),
        ("[bundles.b]\nfiles = ['x']\n", "unknown keys"),
        ("[other]\n", "unknown sections"),
        ("[agents.x\n", "agents.toml"),
    ],
)
def test_bad_files_are_reported(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(text)
    with pytest.raises(AgentConfigError, match=message):
        agent_types(path)


def test_the_registry_prints_as_json(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(CLAUDE_TOML)
    out = subprocess.run(
        [sys.executable, "-m", "vm_images.agents", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    assert data["claude-code"]["command"] == ["claude-agent-acp"]
    assert data["coding-agent"]["bundles"] == ["coding-agent"]


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm on the host")
def test_npm_packages_are_installed_on_the_host_with_their_bins(tmp_path: Path) -> None:
    dest = tmp_path / "npm"
    _install_npm(["semver@7.6.3"], dest, lambda _: None)
    assert (dest / "node_modules" / "semver" / "package.json").is_file()
    assert (dest / "node_modules" / ".bin" / "semver").exists()
