"""The fake model's per-request tool calls (``Turn.shell`` / ``Turn.edit`` /
``Turn.read``): each agent's own tool names and argument shapes, read from the
request's ``tools``, driven through a real HTTP request."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.fake_anthropic import FakeAnthropic, Turn


def _tool(name: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "input_schema": {"type": "object", "properties": props, "required": required},
    }


S, N = {"type": "string"}, {"type": "number"}
CLAUDE = [
    _tool("Read", {"file_path": S, "offset": N}, ["file_path"]),
    _tool(
        "Edit",
        {"file_path": S, "old_string": S, "new_string": S},
        ["file_path", "old_string", "new_string"],
    ),
    _tool("Bash", {"command": S, "timeout": N, "description": S}, ["command"]),
]
OPENCODE = [
    _tool("read", {"filePath": S}, ["filePath"]),
    _tool(
        "edit",
        {"filePath": S, "oldString": S, "newString": S},
        ["filePath", "oldString", "newString"],
    ),
    _tool("bash", {"command": S, "timeout": N, "description": S}, ["command", "description"]),
]
PI = [
    _tool("read", {"path": S}, ["path"]),
    _tool(
        "edit",
        {
            "path": S,
            "edits": {
                "type": "array",
                "items": {"type": "object", "properties": {"oldText": S, "newText": S}},
            },
        },
        ["path", "edits"],
    ),
    _tool("bash", {"command": S, "timeout": N}, ["command"]),
]
MCP = [_tool("mcp__acp__Bash", {"command": S}, ["command"])]


def _ask(fake: FakeAnthropic, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "go"}],
    }
    if tools is not None:
        body["tools"] = tools
    resp = httpx.post(f"{fake.url}/v1/messages?beta=true", json=body, headers={"x-api-key": "k"})
    out: dict[str, Any] = resp.json()
    return out


def test_each_agents_tools_get_their_own_names_and_shapes(fake_anthropic: FakeAnthropic) -> None:
    for _ in range(3):  # one read-edit-shell conversation per agent
        fake_anthropic.script(
            Turn.read("/r/a.py"), Turn.edit("/r/a.py", "x", "y"), Turn.shell("ls")
        )
    calls = [
        _ask(fake_anthropic, tools)["content"][0]
        for tools in (CLAUDE,) * 3 + (OPENCODE,) * 3 + (PI,) * 3
    ]
    got = [(c["name"], c["input"]) for c in calls]
    assert got == [
        ("Read", {"file_path": "/r/a.py"}),
        ("Edit", {"file_path": "/r/a.py", "old_string": "x", "new_string": "y"}),
        ("Bash", {"command": "ls"}),
        ("read", {"filePath": "/r/a.py"}),
        ("edit", {"filePath": "/r/a.py", "oldString": "x", "newString": "y"}),
        ("bash", {"command": "ls", "description": "fake model: description"}),
        ("read", {"path": "/r/a.py"}),
        ("edit", {"path": "/r/a.py", "edits": [{"oldText": "x", "newText": "y"}]}),
        ("bash", {"command": "ls"}),
    ]
    assert [r.path for r in fake_anthropic.requests] == ["/v1/messages"] * 9


def test_mcp_served_tools_and_missing_tools(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Turn.shell("ls"), Turn.edit("a", "x", "y"))
    assert _ask(fake_anthropic, MCP)["content"][0]["name"] == "mcp__acp__Bash"
    error = _ask(fake_anthropic, MCP)
    assert error["type"] == "error" and "no 'edit' tool" in error["error"]["message"], error
    assert "mcp__acp__Bash" in error["error"]["message"]


def test_untooled_side_calls_leave_the_script_alone(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.untooled = Turn.text("A title")
    script = fake_anthropic.script(Turn.shell("ls"))
    assert _ask(fake_anthropic, None)["content"][0]["text"] == "A title"
    assert script.played == 0
    assert _ask(fake_anthropic, PI)["content"][0]["name"] == "bash"
