"""A local fake of the Anthropic Messages API that plays scripted conversations.

A real HTTP server (stdlib ``http.server``, one thread per connection, HTTP/1.1
keep-alive) on a random port. The real ``anthropic`` SDK works against it, both
``messages.create`` and ``messages.stream``::

    fake.script(
        Turn.tool("edit", {"path": "a.py", "old_string": "x", "new_string": "y"}),
        Turn.text("Done", ", fixed."),
        marker="fix-a",          # optional: only requests whose prompt contains it
    )
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k")

Each request plays the next turn of the first script that matches it: a script
with a ``marker`` matches requests whose system prompt or user text contains the
marker; a script without one matches any request. With no turn left the server
answers 400 (``invalid_request_error``), which the SDK does not retry. Every
request is recorded (headers with lower-case names, JSON body) in
``fake.requests``; ``Recorded.api_key`` is the credential sent (``x-api-key`` or
``Authorization: Bearer``).

``stream: true`` gets the real event sequence: ``message_start``, ``ping``,
``content_block_start`` / ``content_block_delta`` (``text_delta``,
``input_json_delta``, ``thinking_delta``, ``signature_delta``) /
``content_block_stop``, ``message_delta`` (stop reason, usage), ``message_stop``.
A turn with ``wait_for`` (a ``threading.Event``) pauses after its first delta
until the event is set, so a test can cancel mid-turn. ``Turn.error`` answers
with an API error instead. ``POST /v1/messages/count_tokens`` is supported.

Real agents (pi, Claude Code, OpenCode) each name and shape their tools their own
way, so a turn can be resolved per request from the request's ``tools``:
``Turn.shell(command)``, ``Turn.edit(path, old, new)`` and ``Turn.read(path)`` call
the agent's own ``bash``/``Bash``/``mcp__acp__Bash``, ``edit``/``Edit`` and
``read``/``Read`` tool with its argument names (``file_path``/``filePath``/``path``,
``old_string``/``oldString``/``oldText`` or pi's ``edits`` list; other required
string arguments get a filler); a request without that tool gets a 400 naming the
tools it had. ``fake.untooled = Turn.text(...)`` answers requests that offer no tools
(OpenCode's title call) without using up a scripted turn. Query strings are ignored
(Claude Code posts to ``/v1/messages?beta=true``).

Timing and fallbacks: ``Turn(delay=s)`` answers that turn ``s`` seconds late (a
slow model); ``FakeAnthropic(latency=s)`` (or ``fake.latency = s``) adds a fixed
latency to every Messages call (benchmarks); ``fake.fallback = Turn.text(...)``
answers requests no script matches (e.g. a model that always answers text, never
a tool call) instead of the 400.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# How long a paused turn waits for its event before going on regardless.
MAX_PAUSE = 60.0
DEFAULT_USAGE = {"input_tokens": 100, "output_tokens": 20}


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


@dataclass
class Block:
    """One content block of a scripted assistant message, with its stream deltas."""

    type: str  # text | tool_use | thinking
    text: str = ""
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    signature: str = ""

    def wire(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": self.text}
        if self.type == "thinking":
            return {"type": "thinking", "thinking": self.text, "signature": self.signature}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


def text(*parts: str) -> Block:
    """A text block, streamed as one ``text_delta`` per part."""
    return Block(type="text", text="".join(parts), parts=list(parts) or [""])


def tool_use(name: str, input: dict[str, Any], id: str | None = None) -> Block:
    """A ``tool_use`` block; its input is streamed in two ``input_json_delta`` pieces."""
    return Block(type="tool_use", id=id or _tool_id(), name=name, input=input)


def thinking(*parts: str, signature: str = "sig-fake") -> Block:
    return Block(type="thinking", text="".join(parts), parts=list(parts), signature=signature)


@dataclass
class Turn:
    """One scripted model response."""

    blocks: list[Block] = field(default_factory=list)
    stop_reason: str | None = None  # default: tool_use if any tool_use block, else end_turn
    usage: dict[str, int] = field(
        default_factory=lambda: {"input_tokens": 100, "output_tokens": 20}
    )
    wait_for: threading.Event | None = None
    error: tuple[int, str, str] | None = None  # (HTTP status, error type, message)
    delay: float = 0.0  # seconds before the answer starts (a slow model)
    # Made into the turn's blocks when a request plays it, from that request's `tools`
    # (Turn.shell / Turn.edit: whichever agent asks, its own tool names and schemas).
    resolve: Callable[[dict[str, Any]], list[Block]] | None = None

    @classmethod
    def shell(cls, command: str, *, say: str | None = None, **kwargs: Any) -> Turn:
        """A call of the requesting agent's own shell tool (``bash``, ``Bash``,
        ``mcp__acp__Bash``...), its arguments named by that tool's schema."""

        def make(body: dict[str, Any]) -> list[Block]:
            tool = find_tool(body, "bash")
            return [
                *([text(say)] if say else []),
                tool_use(tool["name"], shell_input(tool, command)),
            ]

        return cls(resolve=make, **kwargs)

    @classmethod
    def edit(cls, path: str, old: str, new: str, *, say: str | None = None, **kwargs: Any) -> Turn:
        """A call of the requesting agent's own edit tool (``edit``, ``Edit``...): exact
        replacement of ``old`` by ``new`` in ``path``, in that tool's argument shape."""

        def make(body: dict[str, Any]) -> list[Block]:
            tool = find_tool(body, "edit")
            return [
                *([text(say)] if say else []),
                tool_use(tool["name"], edit_input(tool, path, old, new)),
            ]

        return cls(resolve=make, **kwargs)

    @classmethod
    def read(cls, path: str, *, say: str | None = None, **kwargs: Any) -> Turn:
        """A call of the requesting agent's own read tool (Claude Code and OpenCode
        refuse to edit a file the conversation has not read)."""

        def make(body: dict[str, Any]) -> list[Block]:
            tool = find_tool(body, "read")
            props, required = _schema(tool)
            input: dict[str, Any] = {_pick(props, "path", "file_path", "filePath"): path}
            _fill_required(input, props, required)
            return [*([text(say)] if say else []), tool_use(tool["name"], input)]

        return cls(resolve=make, **kwargs)

    def for_request(self, body: dict[str, Any]) -> Turn:
        """This turn as played for ``body`` (a resolving turn gets its blocks; a request
        without the tool it needs gets a 400 naming the tools it had)."""
        if self.resolve is None:
            return self
        try:
            blocks = self.resolve(body)
        except LookupError as exc:
            return Turn(error=(400, "invalid_request_error", f"fake_anthropic: {exc}"))
        return replace(self, blocks=blocks, resolve=None)

    @classmethod
    def text(cls, *parts: str, **kwargs: Any) -> Turn:
        return cls([text(*parts)], **kwargs)

    @classmethod
    def tool(
        cls,
        name: str,
        input: dict[str, Any],
        *,
        id: str | None = None,
        say: str | None = None,
        **kwargs: Any,
    ) -> Turn:
        blocks = [text(say)] if say else []
        return cls([*blocks, tool_use(name, input, id)], **kwargs)

    @classmethod
    def tools(cls, *calls: Block, say: str | None = None, **kwargs: Any) -> Turn:
        return cls([*([text(say)] if say else []), *calls], **kwargs)

    @classmethod
    def fail(cls, status: int, type: str, message: str) -> Turn:
        return cls(error=(status, type, message))

    @property
    def final_stop_reason(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        return "tool_use" if any(b.type == "tool_use" for b in self.blocks) else "end_turn"

    @property
    def tool_ids(self) -> list[str]:
        return [b.id for b in self.blocks if b.type == "tool_use"]


def tool_names(body: dict[str, Any]) -> list[str]:
    return [str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict)]


def find_tool(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The request's tool for ``kind`` (``bash`` / ``edit`` / ``read``): named so (any case) or
    ending in ``__<kind>`` (an MCP-served tool such as ``mcp__acp__Bash``)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    for exact in (True, False):
        for tool in tools:
            name = str(tool["name"]).lower()
            if name == kind if exact else name.endswith(f"__{kind}"):
                return tool
    raise LookupError(f"no {kind!r} tool in the request; its tools: {tool_names(body)}")


def _schema(tool: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    schema = tool.get("input_schema") or {}
    return dict(schema.get("properties") or {}), list(schema.get("required") or [])


def _fill_required(input: dict[str, Any], props: dict[str, Any], required: list[str]) -> None:
    """Give required string arguments we know nothing about (e.g. opencode's bash
    ``description``) a short value, as a model would."""
    for name in required:
        if name not in input and props.get(name, {}).get("type") == "string":
            input[name] = f"fake model: {name}"


def _pick(props: dict[str, Any], *names: str) -> str:
    for name in names:
        if name in props:
            return name
    return names[0]


def shell_input(tool: dict[str, Any], command: str) -> dict[str, Any]:
    props, required = _schema(tool)
    input: dict[str, Any] = {_pick(props, "command", "cmd", "script"): command}
    _fill_required(input, props, required)
    return input


def edit_input(tool: dict[str, Any], path: str, old: str, new: str) -> dict[str, Any]:
    """Arguments of an edit tool in its own shape: ``path`` / ``file_path`` /
    ``filePath``, and ``old_string``/``new_string`` (Claude Code, coding-agent),
    ``oldString``/``newString`` (opencode) or ``oldText``/``newText``, flat or as an
    ``edits`` list (pi)."""
    props, required = _schema(tool)
    input: dict[str, Any] = {_pick(props, "path", "file_path", "filePath"): path}
    if "edits" in props:
        item = (props["edits"].get("items") or {}).get("properties") or {}
        old_key = _pick(item, "oldText", "old_string", "oldString")
        new_key = _pick(item, "newText", "new_string", "newString")
        input["edits"] = [{old_key: old, new_key: new}]
    else:
        input[_pick(props, "old_string", "oldString", "oldText", "old_str")] = old
        input[_pick(props, "new_string", "newString", "newText", "new_str")] = new
    _fill_required(input, props, required)
    return input


@dataclass
class Script:
    turns: list[Turn]
    marker: str | None = None
    played: int = 0

    @property
    def done(self) -> bool:
        return self.played >= len(self.turns)


@dataclass
class Recorded:
    """A request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    script: Script | None = None
    turn: Turn | None = None

    @property
    def api_key(self) -> str | None:
        """The credential sent: ``x-api-key``, or the bearer token of ``authorization``
        (the SDK sends its ``api_key`` as ``Authorization: Bearer`` since 2.x)."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def tool_names(self) -> list[str]:
        return tool_names(self.body)

    def tool_results(self) -> dict[str, dict[str, Any]]:
        """``tool_use_id`` -> tool_result block, from the last user message."""
        if not self.messages:
            return {}
        content = self.messages[-1].get("content")
        if not isinstance(content, list):
            return {}
        return {b["tool_use_id"]: b for b in content if b.get("type") == "tool_result"}


def _prompt_text(body: dict[str, Any]) -> str:
    """System prompt and user-typed text (not tool results) of a request."""
    out: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        out.append(system)
    elif isinstance(system, list):
        out.extend(str(b.get("text", "")) for b in system if isinstance(b, dict))
    for msg in body.get("messages", []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(b.get("text", "")) for b in content if b.get("type") == "text")
    return "\n".join(out)


class FakeAnthropic:
    """The server; use as a context manager or call ``start()`` / ``close()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0) -> None:
        self.requests: list[Recorded] = []
        self.scripts: list[Script] = []
        # Seconds every Messages call takes before its answer starts.
        self.latency = latency
        # Played (never used up) for a request that no script matches; None: a 400.
        self.fallback: Turn | None = None
        # Played (never used up) for a request that offers no tools, before any script:
        # side calls of real agents (opencode's title request) leave the scripts alone.
        self.untooled: Turn | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._gates: list[threading.Event] = []
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def url_for(self, host: str) -> str:
        """The base URL as seen from elsewhere (e.g. a container: the bridge gateway)."""
        return f"http://{host}:{self.port}"

    def start(self) -> FakeAnthropic:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        for gate in self._gates:
            gate.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scripting ---------------------------------------------------------------

    def script(self, *turns: Turn, marker: str | None = None) -> Script:
        """Add a conversation; returns it (``.played`` counts the turns served)."""
        script = Script(list(turns), marker)
        with self._lock:
            self.scripts.append(script)
            self._gates.extend(t.wait_for for t in turns if t.wait_for is not None)
        return script

    def gate(self) -> threading.Event:
        """An event for ``Turn(wait_for=...)``; set for you when the server closes."""
        event = threading.Event()
        self._gates.append(event)
        return event

    def reset(self) -> None:
        with self._lock:
            self.scripts.clear()
            self.requests.clear()

    def _next_turn(self, body: dict[str, Any]) -> tuple[Script | None, Turn | None]:
        prompt = _prompt_text(body)
        if self.untooled is not None and not body.get("tools"):
            return None, self.untooled
        with self._lock:
            for script in self.scripts:
                if script.done:
                    continue
                if script.marker is not None and script.marker not in prompt:
                    continue
                turn = script.turns[script.played]
                script.played += 1
                return script, turn.for_request(body)
            return None, self.fallback.for_request(body) if self.fallback else None

    def _record(self, rec: Recorded) -> None:
        with self._changed:
            self.requests.append(rec)
            self._changed.notify_all()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until at least ``count`` requests arrived (for threads; async code can poll
        ``len(fake.requests)``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(
                    f"expected {count} requests to the fake model, got {len(self.requests)}"
                )
            return list(self.requests)

    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.rstrip("/").endswith("/v1/messages")]

    def next_id(self) -> str:
        return f"msg_fake_{next(self._ids):04d}"


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeAnthropic
    protocol_version = "HTTP/1.1"
    # Each SSE event is its own small write: without TCP_NODELAY, Nagle holds the next
    # one until the client's (delayed) ACK, adding up to 40 ms per response.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            value = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {"_raw": raw.decode(errors="replace")}
        return value if isinstance(value, dict) else {"_json": value}

    def _json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_fake_{uuid.uuid4().hex[:12]}")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, type: str, message: str) -> None:
        # retry-after-ms keeps the SDK's retries of scripted errors quick
        payload = {"type": "error", "error": {"type": type, "message": message}}
        self._json(status, payload, {"retry-after-ms": "1"})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"data": [], "has_more": False, "first_id": None, "last_id": None})
            return
        self._error(404, "not_found_error", f"no route {self.path}")

    def do_POST(self) -> None:
        fake = self.server_fake
        body = self._body()
        path = self.path.split("?", 1)[0].rstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if path == "/v1/messages/count_tokens":
            fake._record(Recorded("POST", path, headers, body))
            self._json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if path != "/v1/messages":
            fake._record(Recorded("POST", path, headers, body))
            self._error(404, "not_found_error", f"no route {self.path}")
            return
        script, turn = fake._next_turn(body)
        fake._record(Recorded("POST", path, headers, body, script, turn))
        if turn is None:
            self._error(400, "invalid_request_error", "fake_anthropic: no scripted turn left")
            return
        pause = fake.latency + turn.delay
        if pause > 0:
            time.sleep(pause)  # this connection's own thread: other requests go on
        if turn.error is not None:
            self._error(*turn.error)
            return
        message_id = fake.next_id()
        model = str(body.get("model", "fake-model"))
        try:
            if body.get("stream"):
                self._stream(message_id, model, turn)
            else:
                self._json(200, _message(message_id, model, turn))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- SSE -----------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, type: str, payload: dict[str, Any]) -> None:
        self._chunk(f"event: {type}\ndata: {json.dumps({'type': type, **payload})}\n\n".encode())

    def _stream(self, message_id: str, model: str, turn: Turn) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_fake_{uuid.uuid4().hex[:12]}")
        self.end_headers()
        start = _message(message_id, model, turn)
        start.update(content=[], stop_reason=None, stop_sequence=None)
        start["usage"] = {**start["usage"], "output_tokens": 1}
        self._event("message_start", {"message": start})
        self._event("ping", {})
        paused = False
        for index, block in enumerate(turn.blocks):
            for delta in _deltas(index, block):
                self._event(delta[0], delta[1])
                if turn.wait_for is not None and not paused and delta[0] == "content_block_delta":
                    paused = True
                    turn.wait_for.wait(MAX_PAUSE)
        self._event(
            "message_delta",
            {
                "delta": {"stop_reason": turn.final_stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": turn.usage.get("output_tokens", 0)},
            },
        )
        self._event("message_stop", {})
        self._chunk(b"")  # a zero-length chunk ends the body (the '0\r\n\r\n' terminator)


def _usage(turn: Turn) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    usage.update(turn.usage)
    return usage


def _message(message_id: str, model: str, turn: Turn) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [b.wire() for b in turn.blocks],
        "stop_reason": turn.final_stop_reason,
        "stop_sequence": None,
        "usage": _usage(turn),
    }


def _deltas(index: int, block: Block) -> Iterator[tuple[str, dict[str, Any]]]:
    if block.type == "text":
        yield "content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}
        for part in block.parts:
            yield (
                "content_block_delta",
                {"index": index, "delta": {"type": "text_delta", "text": part}},
            )
    elif block.type == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        yield "content_block_start", {"index": index, "content_block": start}
        for part in block.parts:
            delta = {"type": "thinking_delta", "thinking": part}
            yield "content_block_delta", {"index": index, "delta": delta}
        delta = {"type": "signature_delta", "signature": block.signature}
        yield "content_block_delta", {"index": index, "delta": delta}
    else:
        start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        yield "content_block_start", {"index": index, "content_block": start}
        raw = json.dumps(block.input)
        cut = len(raw) // 2
        for piece in (raw[:cut], raw[cut:]):
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield "content_block_delta", {"index": index, "delta": delta}
    yield "content_block_stop", {"index": index}


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", port: int = 0) -> Iterator[FakeAnthropic]:
    with FakeAnthropic(host, port) as fake:
        yield fake


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A fresh fake Messages API on 127.0.0.1 (random port) for one test."""
    with serve() as fake:
        yield fake


__all__ = [
    "Block",
    "FakeAnthropic",
    "Recorded",
    "Script",
    "Turn",
    "edit_input",
    "fake_anthropic",
    "find_tool",
    "serve",
    "shell_input",
    "text",
    "thinking",
    "tool_use",
]
