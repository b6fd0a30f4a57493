"""The host's side of an agent turn, cut short without weakening what is stored when:
one read of an agent's stdout is stored in one write (not one commit per line), before
it is acknowledged and before the ACP client acts on the agent's requests (answers to
ours go on during the commit; send_prompt returns only after it); a prompt is written
to the agent only once its ``prompt`` event is stored (the commit runs while the ACP
request is built).

The agent's output is fed to ``Session._stdout`` as the supervisor delivers it (one
chunk per pipe read), so what lands in one batch is deterministic; the whole path with
real agents is covered by test_sessions.py and test_session_with_coding_agent.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from host.sessions import MemoryEventStore, SessionEvent
from host.sessions.limits import SessionLimits
from host.sessions.models import SessionRecord
from host.sessions.session import Session


class GatedStore(MemoryEventStore):
    """Records each write; ``gate`` holds a batch until the test lets it through."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def append(self, event: SessionEvent) -> int:
        self.writes.append([event.kind])
        return await super().append(event)

    async def append_many(self, events: list[SessionEvent]) -> None:
        self.writes.append([e.kind for e in events])
        await self.gate.wait()
        for event in events:
            await super().append(event)


class Sandbox:
    def __init__(self) -> None:
        self.acks: list[int] = []
        self.stdin: list[bytes] = []

    async def ack_output(self, pid: int, offset: int) -> None:
        self.acks.append(offset)

    async def write_stdin(self, pid: int, data: bytes) -> None:
        self.stdin.append(data)


class Manager:
    def __init__(self) -> None:
        self.limits = SessionLimits()
        self.store = GatedStore()
        self.sandbox = Sandbox()


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def chunk_update(text: str) -> bytes:
    update = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    return line({"jsonrpc": "2.0", "method": "session/update", "params": {"update": update}})


ANSWER = line({"jsonrpc": "2.0", "id": 7, "result": {"stopReason": "end_turn"}})


def session(skip_until: int = 0) -> tuple[Session, Manager]:
    manager = Manager()
    record = SessionRecord(
        session_id="s1", agent_type="echo", pid=42, acp_session_id="a1", cwd="/home/user"
    )
    s = Session(manager, record, skip_until=skip_until)  # type: ignore[arg-type]
    s.prompt_ids.add(7)
    return s, manager


async def test_the_lines_of_one_read_are_stored_in_one_write_before_acp_sees_them() -> None:
    s, manager = session()
    store = manager.store
    store.gate.clear()
    data = chunk_update("hel") + chunk_update("lo") + ANSWER + b'{"partial'
    feeding = asyncio.create_task(s._stdout(data))
    await asyncio.sleep(0)  # let it reach the store (a few loop turns at most)
    for _ in range(10):
        if store.writes:
            break
        await asyncio.sleep(0)
    assert store.writes == [["update", "update", "prompt_end"]]
    # Held in the store: nothing is acknowledged yet; the answer to our prompt is
    # with the ACP client already, but what it resolves waits for the commit.
    assert s.processed == 0
    flushed = asyncio.create_task(s.flushed())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not flushed.done()
    store.gate.set()
    await feeding
    await flushed
    events = await store.read("s1")
    assert [(e.seq, e.kind) for e in events] == [(1, "update"), (2, "update"), (3, "prompt_end")]
    ends = [len(chunk_update("hel")), len(chunk_update("hel") + chunk_update("lo"))]
    assert [e.offset for e in events] == [*ends, ends[1] + len(ANSWER)]
    assert events[2].data == {"stop_reason": "end_turn"}
    assert "".join(s.text_parts) == "hello"
    # Only the answer goes to the ACP connection (notifications are the host's).
    assert s.transport.queue.get_nowait() == json.loads(ANSWER)
    assert s.processed == ends[1] + len(ANSWER)  # not past the partial line
    assert s.line_buf == bytearray(b'{"partial')
    if s._ack_task is not None:
        await s._ack_task
    assert manager.sandbox.acks == [s.processed]


async def test_lines_stored_by_an_earlier_host_process_are_not_stored_again() -> None:
    first = chunk_update("old")
    s, manager = session(skip_until=len(first))
    await s._stdout(first + chunk_update("new") + ANSWER)
    events = await manager.store.read("s1")
    assert [e.data.get("content", {}).get("text") for e in events[:1]] == ["new"]
    assert [e.kind for e in events] == ["update", "prompt_end"]
    assert manager.store.writes == [["update", "prompt_end"]]


async def test_a_read_with_one_event_or_none_writes_once_or_not_at_all() -> None:
    s, manager = session()
    await s._stdout(b"\n" + chunk_update("x")[:10])  # an empty line, half a line
    assert manager.store.writes == []
    await s._stdout(chunk_update("x")[10:])
    assert manager.store.writes == [["update"]]


PROMPT = {"jsonrpc": "2.0", "id": 7, "method": "session/prompt", "params": {}}


async def test_a_prompt_reaches_the_agent_only_once_its_event_is_stored() -> None:
    s, manager = session()
    s.prompt_ids.clear()
    stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    s.prompt_stored = stored
    writing = asyncio.create_task(s.write_message(dict(PROMPT)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert manager.sandbox.stdin == [] and not writing.done()
    stored.set_result(None)
    await writing
    assert [json.loads(b) for b in manager.sandbox.stdin] == [PROMPT]
    assert s.prompt_ids == {7} and s.prompt_stored is None


async def test_a_prompt_whose_event_was_not_stored_is_never_sent() -> None:
    s, manager = session()
    s.prompt_ids.clear()
    stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stored.set_exception(OSError("disk full"))
    s.prompt_stored = stored
    with pytest.raises(OSError, match="disk full"):
        await s.write_message(dict(PROMPT))
    assert manager.sandbox.stdin == [] and s.prompt_ids == set()


async def test_a_request_from_the_agent_waits_for_the_commit_of_its_read() -> None:
    s, manager = session()
    store = manager.store
    store.gate.clear()
    request = {"jsonrpc": "2.0", "id": "r1", "method": "fs/read_text_file", "params": {}}
    feeding = asyncio.create_task(s._stdout(chunk_update("a") + line(request) + ANSWER))
    for _ in range(10):
        await asyncio.sleep(0)
    assert store.writes == [["update", "prompt_end"]]
    assert s.transport.queue.empty()  # neither the request nor the answer yet
    store.gate.set()
    await feeding
    got = [s.transport.queue.get_nowait() for _ in range(2)]
    assert got == [request, json.loads(ANSWER)]  # in the agent's order
