"""host/ reads the engine only through its public API (orchestrator/inspect.py and
the engine's public methods), never through its internals."""

from __future__ import annotations

import re
from pathlib import Path

HOST = Path(__file__).resolve().parents[1] / "host"

# Engine internals: the instance table, the raw store, the running flag, and the
# in-memory parts of an actor instance.
FORBIDDEN = [
    (re.compile(r"\.instances\b"), "engine.instances"),
    (re.compile(r"\._running\b"), "engine._running"),
    (re.compile(r"\b(?:engine\w*|c|ctx|\w*_engine)(?:\[\d+\])?\.store\b"), "engine.store"),
    (re.compile(r"\binst\.(?:subscribers|vars|pending|leased|record)\b"), "instance internals"),
    (re.compile(r"\bbroadcast_internal\b"), "instance.broadcast_internal"),
]


def offences() -> list[str]:
    found: list[str] = []
    for path in sorted(HOST.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line):
                    found.append(
                        f"{path.relative_to(HOST.parent)}:{number}: {what}: {line.strip()}"
                    )
    return found


def test_host_uses_no_engine_internals() -> None:
    assert offences() == []


def test_the_check_catches_what_it_forbids() -> None:
    samples = [
        "awake = len(engine.instances)",
        "rec = await engine.store.get_actor(actor_id)",
        "engine._running = True",
        "blobs = blob_store_for(c.store.path)",
        "inst = engine_ref[0].store",
        "n = len(inst.subscribers)",
    ]
    for line in samples:
        assert any(p.search(line) for p, _ in FORBIDDEN), line
    # A session manager's own event store is not the engine's.
    assert not any(p.search("events = await self.store.read(sid)") for p, _ in FORBIDDEN)
