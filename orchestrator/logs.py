"""Numbered, append-only logs per actor (e.g. an agent session's updates).

``c.log(stream)`` gives an :class:`ActorLog`; ``append`` assigns the next number
and commits the entry at once (even inside an action), so readers see it live.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .errors import NotSerializable
from .storage import base
from .storage.base import LogRecord

if TYPE_CHECKING:
    from ._instance import ActorInstance


class ActorLog:
    def __init__(self, instance: ActorInstance, stream: str) -> None:
        self._instance = instance
        self.stream = stream

    async def _next_seq(self) -> int:
        inst = self._instance
        seqs = inst.log_seqs
        if self.stream not in seqs:
            seqs[self.stream] = await inst.store.last_log_seq(inst.actor_id, self.stream)
        seqs[self.stream] += 1
        return seqs[self.stream]

    async def append(self, payload: Any) -> int:
        """Append ``payload`` (JSON); returns its number (1, 2, ...)."""
        try:
            text = json.dumps(payload, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"log entry is not JSON: {exc}", field="payload") from exc
        seq = await self._next_seq()
        rec = LogRecord(self._instance.actor_id, self.stream, seq, text, time.time())
        # Committed on its own, at once: a log is a stream others read while the
        # action that writes it (e.g. a long prompt) is still running.
        await self._instance.store.submit([(base.APPEND_LOG, rec)])
        return seq

    async def append_many(self, payloads: list[Any]) -> list[int]:
        """Append several entries (numbered in order) in one commit; all or none."""
        try:
            texts = [json.dumps(p, separators=(",", ":")) for p in payloads]
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"log entry is not JSON: {exc}", field="payload") from exc
        if not texts:
            return []
        seqs = [await self._next_seq()]
        inst = self._instance
        for _ in texts[1:]:  # no await in between: the numbers stay contiguous
            inst.log_seqs[self.stream] += 1
            seqs.append(inst.log_seqs[self.stream])
        now = time.time()
        ops = [
            (base.APPEND_LOG, LogRecord(inst.actor_id, self.stream, seq, text, now))
            for seq, text in zip(seqs, texts, strict=True)
        ]
        await inst.store.submit(ops)
        return seqs

    async def compact(self, payload: Any) -> int:
        """Replace every entry of this log by one entry ``payload``, numbered with the
        log's last number (so later appends and ``read(since)`` stay consistent);
        atomic: readers see the old entries or the compacted one, never a mix."""
        try:
            text = json.dumps(payload, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"log entry is not JSON: {exc}", field="payload") from exc
        inst = self._instance
        await inst.store.flush()
        seq = inst.log_seqs.get(self.stream)
        if seq is None:
            seq = inst.log_seqs[self.stream] = await inst.store.last_log_seq(
                inst.actor_id, self.stream
            )
        seq = max(seq, 1)
        inst.log_seqs[self.stream] = seq
        rec = LogRecord(inst.actor_id, self.stream, seq, text, time.time())
        await inst.store.submit([(base.REPLACE_LOG, rec)])
        return seq

    async def read(self, since: int = 0, limit: int | None = None) -> list[tuple[int, Any]]:
        """``(seq, payload)`` pairs with ``seq > since``, oldest first."""
        await self._instance.store.flush()
        recs = await self._instance.store.read_log(
            self._instance.actor_id, self.stream, since, limit
        )
        return [(r.seq, json.loads(r.payload)) for r in recs]
