"""One awake actor: its state in memory, its queue mirror, and its run handler."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._json import dumps as _dumps
from ._tx import Tx, current_tx, open_tx
from .contexts import ActorContext
from .errors import (
    ActionNotFound,
    EventNotDeclared,
    InvalidRequest,
    MessageTooLarge,
    NotSerializable,
    QueueFull,
    QueueNotFound,
    SubscriberTooSlow,
)
from .metrics import ACTION_SECONDS
from .runs import RunQueues
from .storage import base
from .storage.base import ActorRecord, HistoryRecord, MessageRecord, RunRecord, ScheduleRecord

if TYPE_CHECKING:
    from .definitions import ActorDefinition
    from .engine import Engine
    from .workflow._context import WorkflowRun

log = logging.getLogger("agentvm.actor")


def validate_body(model: Any, body: Any, queue: str) -> Any:
    """Check a message against its queue's model; keep what the sender sent."""
    from pydantic import ValidationError

    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        field = f"body.{loc}" if loc else "body"
        raise InvalidRequest(
            f"message for queue {queue!r} is invalid: {field}: {first.get('msg')}",
            field=field,
            queue=queue,
        ) from exc
    return body


class Event:
    """A broadcast as a subscriber receives it."""

    __slots__ = ("_size", "name", "payload")

    def __init__(self, name: str, payload: Any) -> None:
        self.name = name
        self.payload = payload
        self._size = -1

    @property
    def size(self) -> int:
        """About how many bytes the event takes once serialised (computed once, shared
        by every subscriber)."""
        if self._size < 0:
            self._size = len(self.name) + approx_size(self.payload)
        return self._size

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.payload!r})"


def approx_size(value: Any) -> int:
    """A cheap estimate of ``value``'s JSON size (bytes count as base64), without
    recursion so a deep payload cannot exhaust the stack."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, (bytes, bytearray, memoryview)):
            total += len(item) * 4 // 3 + 16
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            for k, v in item.items():
                stack.append(k)
                stack.append(v)
        elif isinstance(item, (list, tuple)):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 8
    return total


# Per-subscriber bounds when the caller names none (the HTTP server passes its settings).
SUBSCRIBER_MAX_BYTES = 8 * 1024 * 1024
SUBSCRIBER_MAX_EVENTS = 10_000


class Subscription:
    """An in-process subscriber: ``async for event in sub``; ``close()`` when done.

    What it has not yet consumed is bounded by ``max_events`` and ``max_bytes``
    (:meth:`Event.size`). A subscriber that falls further behind is *dropped*: its
    buffer is freed, it leaves the actor's subscribers at once, and its next read
    raises :class:`SubscriberTooSlow` (a stalled reader must neither stall the actor
    nor make the host hold its backlog).
    """

    def __init__(
        self,
        engine: Engine,
        actor_id: str,
        events: set[str] | None,
        *,
        max_bytes: int = SUBSCRIBER_MAX_BYTES,
        max_events: int = SUBSCRIBER_MAX_EVENTS,
    ) -> None:
        self._engine = engine
        self.actor_id = actor_id
        self.events = events
        self.max_bytes = max_bytes
        self.max_events = max_events
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._buffered = 0
        self.closed = False
        self.too_slow = False

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def _deliver(self, event: Event) -> None:
        if self.closed or (self.events is not None and event.name not in self.events):
            return
        size = event.size
        if self._queue.qsize() >= self.max_events or self._buffered + size > self.max_bytes:
            self._drop()
            return
        self._buffered += size
        self._queue.put_nowait(event)

    def _drop(self) -> None:
        self.too_slow = True
        self.closed = True
        while not self._queue.empty():  # free the backlog now, not when the reader leaves
            self._queue.get_nowait()
        self._buffered = 0
        self._queue.put_nowait(None)
        self._engine._unsubscribe(self)

    def _too_slow_error(self) -> SubscriberTooSlow:
        return SubscriberTooSlow(
            "this subscriber fell too far behind the actor's broadcasts and was dropped "
            f"(more than {self.max_events} events or {self.max_bytes} bytes unread)",
            actor_id=self.actor_id,
            max_events=self.max_events,
            max_bytes=self.max_bytes,
        )

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self.closed and self._queue.empty():
            if self.too_slow:
                raise self._too_slow_error()
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            if self.too_slow:
                raise self._too_slow_error()
            raise StopAsyncIteration
        self._buffered -= item.size
        return item

    async def next(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)
            self._engine._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ActorInstance:
    def __init__(self, engine: Engine, definition: ActorDefinition, record: ActorRecord) -> None:
        self.engine = engine
        self.store = engine.store
        self.definition = definition
        self.record = record
        self.actor_id = record.actor_id
        self.name = record.name
        self.key = record.key
        self.state: Any = json.loads(record.state)
        self._persisted_state = record.state
        self.vars: Any = definition.initial_vars()
        self.pending: list[MessageRecord] = []
        self.leased: dict[int, MessageRecord] = {}
        self._signal = asyncio.Event()
        self.subscribers: set[Subscription] = set()
        self.inflight = 0
        self.active_fibers = 0
        self.fiber_deadlines: dict[object, float] = {}
        self.run_task: asyncio.Task[None] | None = None
        self.workflow_run: WorkflowRun | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self.log_seqs: dict[str, int] = {}
        self.alive = True
        self.runs = RunQueues(self)
        opts = definition.options
        cfg = engine.config
        self.max_queue_length = opts.max_queue_length or cfg.max_queue_length
        self.max_message_size = opts.max_message_size or cfg.max_message_size
        self.sleep_timeout = opts.sleep_timeout
        if self.sleep_timeout is not None and cfg.sleep_timeout is not None:
            self.sleep_timeout = min(self.sleep_timeout, cfg.sleep_timeout)

    # -- state persistence ---------------------------------------------------------------

    def state_ops(self) -> list[base.Op]:
        """The state write for the current commit, if the state changed."""
        try:
            text = _dumps(self.state)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"state of actor {self.name!r} is not JSON: {exc}", field="state"
            ) from exc
        if text == self._persisted_state:
            return []
        self._persisted_state = text
        return [(base.SET_STATE, self.actor_id, text)]

    def restore_state(self) -> None:
        self.state = json.loads(self._persisted_state)

    # -- activity / idleness -------------------------------------------------------------

    def is_idle(self) -> bool:
        return self.inflight == 0 and self.active_fibers == 0 and not self.subscribers

    def _busy(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def check_idle(self) -> None:
        if self.sleep_timeout is None or self._idle_handle is not None or not self.alive:
            return
        if self.is_idle():
            loop = asyncio.get_running_loop()
            self._idle_handle = loop.call_later(self.sleep_timeout, self._idle_fired)

    def _idle_fired(self) -> None:
        self._idle_handle = None
        if self.alive and self.is_idle():
            self.engine.request_sleep(self)

    def fiber_started(self) -> None:
        self.active_fibers += 1
        self._busy()

    def fiber_ended(self) -> None:
        self.active_fibers -= 1
        self.check_idle()

    def fiber_parked(self) -> None:
        self.active_fibers -= 1
        self.check_idle()

    def fiber_resumed(self) -> None:
        self.active_fibers += 1
        self._busy()

    @contextmanager
    def parked(self, until: float | None) -> Iterator[None]:
        token = object()
        if until is not None:
            self.fiber_deadlines[token] = until
        self.fiber_parked()
        try:
            yield
        finally:
            self.fiber_deadlines.pop(token, None)
            self.fiber_resumed()

    def begin(self) -> None:
        self.inflight += 1
        self._busy()

    def end(self) -> None:
        self.inflight -= 1
        self.check_idle()

    def next_alarm(self) -> float | None:
        return min(self.fiber_deadlines.values(), default=None)

    # -- actions ------------------------------------------------------------------------------

    async def call_action(
        self,
        name: str,
        args: list[Any] | tuple[Any, ...],
        *,
        extra_ops: list[base.Op] | None = None,
    ) -> Any:
        fn = self.definition.actions.get(name)
        if fn is None:
            raise ActionNotFound(
                f"actor type {self.name!r} has no action {name!r}",
                actor=self.name,
                action=name,
                available=sorted(self.definition.actions),
            )
        self.begin()
        started = time.perf_counter()
        tx = Tx(list(extra_ops or ()))
        token = current_tx.set(tx)
        c = ActorContext(self)
        try:
            try:
                result = fn(c, *args)
                if inspect.isawaitable(result):
                    result = await result
            except BaseException:
                # An action that fails changes nothing.
                try:
                    if _dumps(self.state) != self._persisted_state:
                        self.restore_state()
                except (TypeError, ValueError):
                    self.restore_state()
                if extra_ops:
                    await self.store.submit(list(extra_ops))
                raise
            finally:
                current_tx.reset(token)
                tx.closed = True
                c.queue._ack()
            ops = tx.ops
            persisted = self._persisted_state
            ops.extend(self.state_ops())
            if ops:
                try:
                    await self.store.submit_await(ops)
                except Exception:
                    # Not committed (e.g. a full disk): memory must not keep a change
                    # the file does not have, or the next commit would write it.
                    self._persisted_state = persisted
                    self.restore_state()
                    raise
            if tx.after:
                tx.run_after()
            return result
        finally:
            ACTION_SECONDS.observe(time.perf_counter() - started, actor=self.name, action=name)
            self.end()

    async def run_hook(self, hook: Any, *args: Any) -> None:
        """Run a lifecycle hook and commit what it changed."""
        if hook is None:
            return
        tx = Tx()
        token = current_tx.set(tx)
        try:
            result = hook(ActorContext(self), *args)
            if inspect.isawaitable(result):
                await result
        finally:
            current_tx.reset(token)
            tx.closed = True
        ops = tx.ops + self.state_ops()
        if ops:
            await self.store.submit_await(ops)
        tx.run_after()

    # -- broadcast --------------------------------------------------------------------------

    def broadcast(self, event: str, payload: Any) -> None:
        events = self.definition.events
        if events and event not in events:
            raise EventNotDeclared(
                f"actor type {self.name!r} declares no event {event!r}",
                event=event,
                declared=sorted(events),
            )
        if not self.subscribers:
            return
        ev = Event(event, payload)
        for sub in list(self.subscribers):
            sub._deliver(ev)

    def broadcast_internal(self, event: str, payload: Any) -> None:
        """Engine-originated events (workflow outcome), exempt from declarations."""
        ev = Event(event, payload)
        for sub in list(self.subscribers):
            sub._deliver(ev)

    # -- queue --------------------------------------------------------------------------------

    def check_queue_names(self, names: list[str]) -> None:
        declared = self.definition.queues
        if declared:
            for n in names:
                if n not in declared:
                    raise QueueNotFound(
                        f"actor type {self.name!r} has no queue {n!r}",
                        queue=n,
                        declared=sorted(declared),
                    )

    def make_message(self, queue: str, body: Any) -> MessageRecord:
        """Validate a send and build its record; refuses before anything is stored."""
        self.check_queue_names([queue])
        spec = self.definition.queues.get(queue)
        if spec is not None and spec.body is not None:
            body = validate_body(spec.body, body, queue)
        try:
            text = _dumps(body)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"message body is not JSON: {exc}", field="body") from exc
        size = len(text.encode())
        if size > self.max_message_size:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds the limit of {self.max_message_size} bytes",
                field="body",
                size=size,
                limit=self.max_message_size,
            )
        depth = len(self.pending) + len(self.leased) + len(self.runs.runs)
        if depth >= self.max_queue_length:
            raise QueueFull(
                f"queue of actor {self.name!r} holds {depth} messages, the limit is "
                f"{self.max_queue_length}",
                queue=queue,
                limit=self.max_queue_length,
            )
        return MessageRecord(self.store.next_message_id(), self.actor_id, queue, text, time.time())

    def message_ops(self, rec: MessageRecord) -> tuple[list[base.Op], RunRecord | None]:
        """What a send commits: the message, and on a run queue its run row with it."""
        if rec.queue in self.runs:
            run = self.runs.new_run(rec)
            return [(base.PUT_MESSAGE, rec), (base.PUT_RUN, run)], run
        return [(base.PUT_MESSAGE, rec)], None

    def accept(self, rec: MessageRecord, run: RunRecord | None) -> None:
        """A committed send: a run goes to its queue's scheduler, a message to consumers."""
        if run is not None:
            self.runs.add(run)
        else:
            self.deliver(rec)

    def deliver(self, rec: MessageRecord) -> None:
        self.pending.append(rec)
        self._signal.set()

    async def send_to_self(self, queue: str, body: Any) -> int:
        rec = self.make_message(queue, body)
        ops, run = self.message_ops(rec)
        tx = open_tx()
        if tx is not None:
            tx.ops.extend(ops)
            tx.after.append(lambda: self.accept(rec, run))
        else:
            await self.store.submit_await(ops)
            self.accept(rec, run)
        return rec.message_id

    def take_messages(self, names: list[str] | None, count: int) -> list[MessageRecord]:
        pending = self.pending
        if not pending:
            return []
        if names is None:
            taken = pending[:count]
            del pending[:count]
            return taken
        taken = []
        keep = []
        for rec in pending:
            if len(taken) < count and rec.queue in names:
                taken.append(rec)
            else:
                keep.append(rec)
        if taken:
            self.pending = keep
        return taken

    async def wait_messages(
        self, names: list[str] | None, count: int, deadline: float | None
    ) -> list[MessageRecord]:
        while True:
            taken = self.take_messages(names, count)
            if taken:
                return taken
            self._signal.clear()
            if deadline is None:
                await self._signal.wait()
            else:
                remaining = deadline - time.time()
                if remaining <= 0:
                    return []
                try:
                    await asyncio.wait_for(self._signal.wait(), remaining)
                except TimeoutError:
                    return self.take_messages(names, count)

    def lease(self, rec: MessageRecord) -> None:
        self.leased[rec.message_id] = rec

    def consumed(self, message_id: int) -> None:
        """A message was received without completion; release its waiting sender."""
        self.leased.pop(message_id, None)
        self.engine.resolve_waiter(message_id, None)

    def ack_messages(self, ids: list[int]) -> None:
        self.store.submit_nowait([(base.DELETE_MESSAGE, i) for i in ids])
        for i in ids:
            self.consumed(i)

    async def complete_message(self, message_id: int, response: Any) -> None:
        try:
            _dumps(response)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"message response is not JSON: {exc}", field="response") from exc
        await self.store.submit([(base.DELETE_MESSAGE, message_id)])
        self.leased.pop(message_id, None)
        self.engine.resolve_waiter(message_id, response)

    def release_leases(self) -> None:
        """Give leased messages back (their consumer is gone without completing)."""
        if self.leased:
            back = list(self.leased.values())
            self.leased.clear()
            self.pending = sorted(back + self.pending, key=lambda r: r.message_id)
            self._signal.set()

    # -- schedules -------------------------------------------------------------------------

    async def schedule_action(self, when: float, action: str, args: list[Any]) -> int:
        if action not in self.definition.actions:
            raise ActionNotFound(
                f"cannot schedule unknown action {action!r} of actor type {self.name!r}",
                action=action,
            )
        try:
            args_json = _dumps(args)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"scheduled action arguments are not JSON: {exc}", field="args"
            ) from exc
        rec = ScheduleRecord(
            self.store.next_schedule_id(), self.actor_id, when, action, args_json, time.time()
        )
        tx = open_tx()
        if tx is not None:
            tx.ops.append((base.PUT_SCHEDULE, rec))
            tx.after.append(lambda: self.engine.arm_schedule(rec))
        else:
            await self.store.submit([(base.PUT_SCHEDULE, rec)])
            self.engine.arm_schedule(rec)
        return rec.schedule_id

    # -- run handler ----------------------------------------------------------------------

    def start_run(
        self,
        history: list[HistoryRecord],
        runs: list[RunRecord] | None = None,
        run_history: dict[int, list[HistoryRecord]] | None = None,
    ) -> None:
        """Start the main run handler (replaying ``history``) and the unfinished runs."""
        self.start_main(history)
        if self.runs.specs:
            self.runs.load(runs or [], run_history or {})

    def start_main(self, history: list[HistoryRecord]) -> None:
        run = self.definition.run
        if run is None:
            return
        if self.definition.is_workflow:
            if self.record.workflow_status in ("completed", "failed", "cancelled"):
                return
            from .workflow._driver import drive_workflow

            coro = drive_workflow(self, run, history)
        else:
            coro = self._drive_plain(run)
        self.active_fibers += 1
        self.run_task = asyncio.create_task(coro, name=f"actor:{self.name}:{self.actor_id}")

    async def _drive_plain(self, run: Any) -> None:
        c = ActorContext(self)
        try:
            result = run(c)
            if inspect.isawaitable(result):
                await result
            c.queue._ack()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run handler of actor %s %s failed", self.name, list(self.key))
            self.release_leases()
        finally:
            self.active_fibers -= 1
            self.check_idle()

    async def stop_run(self) -> None:
        """Stop the main run handler and every run (nothing is recorded: they resume
        on the next wake)."""
        await self.stop_main()
        await self.runs.stop()

    async def stop_main(self) -> None:
        task = self.run_task
        self.run_task = None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
