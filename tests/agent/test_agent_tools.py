"""The coding agent's tools, called directly (standard library only, no model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vm_images.coding_agent import tools
from vm_images.coding_agent.config import Config, from_env, with_meta
from vm_images.coding_agent.tools import ToolContext, run_tool


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("import os\n\nVALUE = 1\n")
    (tmp_path / "src" / "main.py").write_text("from pkg.mod import VALUE\nprint(VALUE)\n")
    (tmp_path / "README.md").write_text("".join(f"line {i}\n" for i in range(1, 31)))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.py").write_text("VALUE = 'hidden'\n")
    return ToolContext(cwd=str(tmp_path), bash_timeout=30)


async def test_read_line_ranges(ctx: ToolContext) -> None:
    out = await run_tool(ctx, "read", {"path": "README.md", "offset": 10, "limit": 3})
    assert out.text.splitlines()[:3] == ["    10\tline 10", "    11\tline 11", "    12\tline 12"]
    assert "18 more lines; read on with offset=13" in out.text
    missing = await run_tool(ctx, "read", {"path": "nope.txt"})
    assert missing.is_error and "does not exist" in missing.text
    past = await run_tool(ctx, "read", {"path": "README.md", "offset": 99})
    assert "past the end" in past.text


async def test_edit_requires_a_unique_match_and_reports_a_diff(
    ctx: ToolContext, tmp_path: Path
) -> None:
    path = tmp_path / "dup.txt"
    path.write_text("x = 1\nx = 1\n")
    ambiguous = await run_tool(
        ctx, "edit", {"path": "dup.txt", "old_string": "x = 1", "new_string": "x = 2"}
    )
    assert ambiguous.is_error and "occurs 2 times" in ambiguous.text
    missing = await run_tool(ctx, "edit", {"path": "dup.txt", "old_string": "y", "new_string": "z"})
    assert missing.is_error and "not found" in missing.text
    done = await run_tool(
        ctx,
        "edit",
        {"path": "dup.txt", "old_string": "x = 1", "new_string": "x = 2", "replace_all": True},
    )
    assert not done.is_error
    assert path.read_text() == "x = 2\nx = 2\n"
    assert done.change is not None and done.change.old_text == "x = 1\nx = 1\n"
    assert "--- a/dup.txt\n+++ b/dup.txt" in done.raw["diff"]
    assert "-x = 1\n-x = 1\n+x = 2\n+x = 2" in done.raw["diff"]


async def test_write_creates_parents(ctx: ToolContext, tmp_path: Path) -> None:
    out = await run_tool(ctx, "write", {"path": "a/b/c.txt", "content": "hi\n"})
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "hi\n"
    assert out.change is not None and out.change.old_text is None


async def test_glob_is_path_aware_and_skips_vcs(ctx: ToolContext) -> None:
    out = await run_tool(ctx, "glob", {"pattern": "**/*.py"})
    assert out.text.splitlines() == ["src/main.py", "src/pkg/mod.py"]
    top = await run_tool(ctx, "glob", {"pattern": "*.md"})
    assert top.text == "README.md"
    under = await run_tool(ctx, "glob", {"pattern": "*.py", "path": "src"})
    assert under.text == "main.py"


@pytest.mark.parametrize("use_rg", [True, False])
async def test_grep(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch, use_rg: bool) -> None:
    if use_rg and shutil.which("rg") is None:
        pytest.skip("no ripgrep on this host")
    if not use_rg:
        monkeypatch.setattr(tools.shutil, "which", lambda _name: None)
    out = await run_tool(ctx, "grep", {"pattern": r"VALUE\b", "glob": "*.py"})
    lines = sorted(out.text.splitlines())
    assert lines == [
        "src/main.py:1:from pkg.mod import VALUE",
        "src/main.py:2:print(VALUE)",
        "src/pkg/mod.py:3:VALUE = 1",
    ]
    none = await run_tool(ctx, "grep", {"pattern": "absent-text"})
    assert "No matches" in none.text
    insensitive = await run_tool(ctx, "grep", {"pattern": "IMPORT OS", "ignore_case": True})
    assert insensitive.text == "src/pkg/mod.py:1:import os"


async def test_bash_exit_codes_output_and_timeout(ctx: ToolContext) -> None:
    ok = await run_tool(ctx, "bash", {"command": "echo out; echo err >&2; pwd"})
    assert not ok.is_error and ok.text.startswith("Exit code 0.")
    assert "out\nerr\n" in ok.text and ctx.cwd in ok.text
    failed = await run_tool(ctx, "bash", {"command": "exit 3"})
    assert failed.is_error and failed.raw["exit_code"] == 3
    slow = await run_tool(ctx, "bash", {"command": "echo started; sleep 30", "timeout": 1})
    assert slow.is_error and "timed out after 1s" in slow.text and "started" in slow.text
    # a background child keeping the pipe open does not hang the call
    bg = await run_tool(ctx, "bash", {"command": "(sleep 30 &) ; echo fg"})
    assert "fg" in bg.text


async def test_bad_input_is_an_error_result(ctx: ToolContext) -> None:
    assert (await run_tool(ctx, "nope", {})).is_error
    assert (await run_tool(ctx, "read", {})).is_error
    assert (await run_tool(ctx, "edit", {"path": "README.md"})).is_error


def test_config_meta_over_env_over_defaults() -> None:
    assert from_env({}) == Config()
    env = from_env({"AGENTVM_MODEL": "m-env", "AGENTVM_MAX_TURNS": "7", "AGENTVM_SESSION_ID": "s"})
    assert (env.model, env.max_turns, env.session_header) == ("m-env", 7, "s")
    meta = with_meta(env, {"model": "m-meta", "additionalInstructions": "be terse"})
    assert (meta.model, meta.max_turns, meta.instructions) == ("m-meta", 7, "be terse")
    system = meta.system("/work")
    assert "/work" in system and system.rstrip().endswith("be terse")
    custom = with_meta(env, {"systemPrompt": "Only {cwd}."})
    assert custom.system("/w") == "Only /w."
    with pytest.raises(ValueError):
        with_meta(env, {"maxTurns": 0})
