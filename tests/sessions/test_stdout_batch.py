"""One read of an agent's stdout is stored in one write (not one commit per line),
still before the ACP connection sees any of it and before it is acknowledged.

The agent's output is fed to ``Session._stdout`` as the supervisor delivers it (one
chunk per pipe read), so what lands in one batch is deterministic; the whole path with
real agents is covered by test_sessions.py and test_session_with_coding_agent.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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

    async def ack_output(self, pid: int, offset: int) -> None:
        self.acks.append(offset)


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
    # Held in the store: nothing is handed on or acknowledged yet.
    assert s.transport.queue.empty()
    assert s.processed == 0
    store.gate.set()
    await feeding
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
