"""A tiny ACP agent for the session tests (runs inside the sandbox; needs only the
`agent-client-protocol` wheel). The prompt text is a command:

    echo <text>           reply <text> (two chunks)
    count <n>             n agent_message_chunk updates "0 ".."n-1 ", one every 20 ms
    read <path>           reply the file's content, read through the client (fs/read_text_file)
    write <path> <text>   write through the client (fs/write_text_file), reply "ok"
    run <shell command>   run through a client terminal, reply "<exit>:<output>"
    ask                   request permission, reply the outcome (option id or cancelled)
    wait                  block until session/cancel, then stop with `cancelled`
    model                 POST to $ANTHROPIC_BASE_URL/v1/messages (stream), reply the raw body
    crash                 write to stderr and exit 3
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
import uuid
from typing import Any

import acp
from acp import (
    PROTOCOL_VERSION,
    run_agent,
    start_tool_call,
    update_agent_message_text,
)
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ToolCallUpdate,
)


class EchoAgent:
    def __init__(self) -> None:
        self.conn: Any = None
        self.cancelled: dict[str, asyncio.Event] = {}

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=False),
            agent_info=Implementation(name="echo-agent", version="1.0"),
        )

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        sid = "echo-" + uuid.uuid4().hex[:8]
        self.cancelled[sid] = asyncio.Event()
        print(f"new session {sid} meta={json.dumps(kwargs)}", file=sys.stderr, flush=True)
        return NewSessionResponse(session_id=sid)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        self.cancelled[session_id].set()

    async def say(self, sid: str, text: str) -> None:
        await self.conn.session_update(sid, update_agent_message_text(text))

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        sid = session_id
        text = "".join(getattr(b, "text", "") for b in prompt)
        cmd, _, rest = text.partition(" ")
        self.cancelled[sid].clear()
        if cmd == "echo":
            half = len(rest) // 2
            await self.say(sid, rest[:half])
            await self.say(sid, rest[half:])
        elif cmd == "count":
            for i in range(int(rest)):
                await self.say(sid, f"{i} ")
                await asyncio.sleep(0.02)
        elif cmd == "read":
            res = await self.conn.read_text_file(session_id=sid, path=rest)
            await self.say(sid, res.content)
        elif cmd == "write":
            path, _, content = rest.partition(" ")
            await self.conn.write_text_file(session_id=sid, path=path, content=content)
            await self.say(sid, "ok")
        elif cmd == "run":
            term = await self.conn.create_terminal(session_id=sid, command=rest)
            tid = term.terminal_id
            done = await self.conn.wait_for_terminal_exit(session_id=sid, terminal_id=tid)
            out = await self.conn.terminal_output(session_id=sid, terminal_id=tid)
            await self.conn.release_terminal(session_id=sid, terminal_id=tid)
            await self.say(sid, f"{done.exit_code}:{out.output}")
        elif cmd == "ask":
            await self.conn.session_update(
                sid, start_tool_call("t1", "rm -rf build", kind="execute", status="pending")
            )
            res = await self.conn.request_permission(
                session_id=sid,
                tool_call=ToolCallUpdate(tool_call_id="t1", title="rm -rf build", kind="execute"),
                options=[
                    PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
                    PermissionOption(option_id="yes-all", name="Always", kind="allow_always"),
                    PermissionOption(option_id="no", name="Reject", kind="reject_once"),
                ],
            )
            outcome = res.outcome
            await self.say(sid, getattr(outcome, "option_id", None) or outcome.outcome)
        elif cmd == "wait":
            await self.say(sid, "waiting")
            await self.cancelled[sid].wait()
            return PromptResponse(stop_reason="cancelled")
        elif cmd == "model":
            body = json.dumps(
                {
                    "model": "m",
                    "max_tokens": 5,
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ).encode()
            req = urllib.request.Request(
                os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",
                data=body,
                headers={
                    "content-type": "application/json",
                    "x-api-key": os.environ.get("ANTHROPIC_API_KEY", ""),
                    "anthropic-version": "2023-06-01",
                    "x-agentvm-session": os.environ.get("AGENTVM_SESSION_ID", ""),
                },
            )
            raw = await asyncio.to_thread(lambda: urllib.request.urlopen(req).read())
            await self.say(sid, raw.decode())
        elif cmd == "crash":
            print("echo-agent: fatal: the crash command was given", file=sys.stderr, flush=True)
            os._exit(3)
        else:
            await self.say(sid, f"unknown command {cmd!r}")
        return PromptResponse(stop_reason="end_turn")


if __name__ == "__main__":
    version = getattr(acp, "__version__", "?")
    print(f"echo agent starting (acp {version})", file=sys.stderr, flush=True)
    asyncio.run(run_agent(EchoAgent()))
