"""The replay engine: ``WorkflowContext`` and the durable primitives on it.

A workflow function is re-run from the top whenever its actor wakes. Every
primitive (step, loop iteration, sleep, queue receive, join, race, checkpoint,
removed) is a history entry keyed by its name path, e.g.
``fix-loop/~3/run-tests``. A recorded entry returns what it recorded; a new one
runs and is recorded. Writes that do not need their own round trip are
submitted without waiting: the store commits in submission order, so they are
durable no later than the next awaited commit (a step), and if the process dies
before that the work they describe simply happens again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .._json import dumps as _dumps
from .._time import epoch, seconds
from .._tx import Tx, current_tx
from ..contexts import ActorContext
from ..errors import (
    CriticalError,
    HistoryDivergedError,
    InvalidRequest,
    JoinError,
    NotSerializable,
    RaceError,
    StepExhaustedError,
    StepTimeoutError,
    WorkflowError,
)
from ..metrics import STEP_SECONDS
from ..queues import Message
from ..storage import base
from ..storage.base import HistoryRecord

if TYPE_CHECKING:
    from .._instance import ActorInstance
    from ..dag.agent import AgentTask
    from ..runs import RunState

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_BASE = 0.1
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_HISTORY_KEEP = 2


def workflow(fn: Callable[[WorkflowContext], Awaitable[Any]]) -> Callable[..., Any]:
    """Mark ``async def fn(ctx)`` as a durable workflow run handler."""
    fn.__agentvm_workflow__ = True  # type: ignore[attr-defined]
    return fn


# --- loop control ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopContinue:
    state: Any = None


@dataclass(frozen=True, slots=True)
class LoopBreak:
    value: Any = None


class Loop:
    """Return ``Loop.continue_(state)`` or ``Loop.break_(value)`` from a loop body."""

    @staticmethod
    def continue_(state: Any = None) -> LoopContinue:
        return LoopContinue(state)

    @staticmethod
    def break_(value: Any = None) -> LoopBreak:
        return LoopBreak(value)


@dataclass(frozen=True, slots=True)
class RaceResult(Generic[T]):
    winner: str
    value: T


# --- one incarnation of a workflow ------------------------------------------------------


def _error_json(exc: BaseException, **extra: Any) -> str:
    info = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
        **extra,
    }
    return _dumps(info)


def _parent(path: str) -> str:
    i = path.rfind("/")
    return path[:i] if i >= 0 else ""


class WorkflowRun:
    """The history of one workflow as loaded at wake, and replay bookkeeping."""

    def __init__(
        self,
        instance: ActorInstance,
        history: list[HistoryRecord],
        *,
        run: RunState | None = None,
    ) -> None:
        self.instance = instance
        # Set when this is the workflow of one run (a queue's per-message handler).
        self.run_state = run
        self.store = instance.engine.store
        self.actor_id = instance.actor_id
        self.records: dict[str, HistoryRecord] = {}
        # scope → recorded entries directly in it not yet reached by this replay
        self.unvisited: dict[str, set[str]] = {}
        for rec in history:
            self.records[rec.path] = rec
            self.unvisited.setdefault(_parent(rec.path), set()).add(rec.path)
        self.rollback_stack: list[tuple[str, Callable[..., Any], Any]] = []
        self.running_steps: dict[str, float] = {}

    def step_event(
        self, path: str, status: str, attempt: int, error: BaseException | None = None
    ) -> None:
        """Tell a run's watchers about a step (``run_step``); nothing for other workflows."""
        if self.run_state is not None:
            self.run_state.step_event(path, status, attempt, error)

    def visit(self, path: str) -> None:
        pending = self.unvisited.get(_parent(path))
        if pending is not None:
            pending.discard(path)

    def finish_scope(self, scope: str) -> None:
        """At the normal end of a scope, every entry recorded in it must have been reached."""
        pending = self.unvisited.pop(scope, None)
        if pending:
            missing = sorted(pending, key=lambda p: self.records[p].seq)
            raise HistoryDivergedError(
                f"recorded history entry {missing[0]!r} was never reached by the workflow code "
                f"(it was renamed or removed without ctx.removed())",
                entry=missing[0],
                entries=missing,
            )

    def put(
        self,
        path: str,
        kind: str,
        status: str,
        *,
        attempts: int = 0,
        started_at: float | None = None,
        finished_at: float | None = None,
        output: str | None = None,
        error: str | None = None,
        meta: str | None = None,
        seq: int | None = None,
    ) -> base.Op:
        rec = self.records.get(path)
        if seq is None:
            seq = rec.seq if rec is not None else self.store.next_seq()
        new = HistoryRecord(
            path, kind, status, attempts, started_at, finished_at, output, error, meta, seq
        )
        # Remember what we wrote: a later primitive in this incarnation (a retried
        # step, a loop) reads it back.
        self.records[path] = new
        return (base.PUT_HISTORY, self.actor_id, new)

    def forget_tree(self, path: str) -> base.Op:
        prefix = path + "/"
        for p in [p for p in self.records if p == path or p.startswith(prefix)]:
            del self.records[p]
        for scope in [s for s in self.unvisited if s == path or s.startswith(prefix)]:
            del self.unvisited[scope]
        return (base.DELETE_HISTORY_TREE, self.actor_id, path)

    @contextmanager
    def waiting(self, until: float | None) -> Iterator[None]:
        """Mark the calling fiber as parked at a durable wait (the actor may sleep)."""
        inst = self.instance
        token = object()
        if until is not None:
            inst.fiber_deadlines[token] = until
        inst.fiber_parked()
        try:
            yield
        finally:
            inst.fiber_deadlines.pop(token, None)
            inst.fiber_resumed()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        if delay <= 0:
            return
        with self.waiting(when):
            await asyncio.sleep(delay)

    def stored_error(self, rec: HistoryRecord) -> BaseException:
        info = json.loads(rec.error or "{}")
        msg = info.get("message", "step failed")
        if info.get("critical"):
            return CriticalError(msg)
        if info.get("not_json"):
            return NotSerializable(msg, step=rec.path)
        return StepExhaustedError(
            f"step {rec.path!r} failed after {rec.attempts} attempts: {msg}",
            step=rec.path,
            attempts=rec.attempts,
            last_error=info.get("type"),
        )

    async def run_rollbacks(self) -> list[str]:
        """Run registered rollback handlers newest first; each is recorded once done."""
        failures: list[str] = []
        while self.rollback_stack:
            path, handler, output = self.rollback_stack.pop()
            rec = self.records.get(path)
            if rec is not None and rec.status == "rolled_back":
                continue
            ctx = WorkflowContext(self, path + "/rollback")
            last: BaseException | None = None
            for _ in range(DEFAULT_MAX_RETRIES + 1):
                try:
                    result = handler(ctx, output)
                    if inspect.isawaitable(result):
                        await result
                    last = None
                    break
                except Exception as exc:
                    last = exc
            now = time.time()
            if last is None:
                old = rec or HistoryRecord(path, "step", "completed")
                await self.store.submit(
                    [
                        self.put(
                            path,
                            "step",
                            "rolled_back",
                            attempts=old.attempts,
                            started_at=old.started_at,
                            finished_at=now,
                            output=old.output,
                        ),
                        *self.instance.state_ops(),
                    ]
                )
            else:
                failures.append(f"{path}: {last!r}")
        return failures


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(
        1
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("~"):
        raise InvalidRequest(
            f"invalid workflow entry name {name!r}: use a non-empty string without '/' "
            "that does not start with '~'",
            field="name",
        )


# --- the context -------------------------------------------------------------------------


class WorkflowContext(ActorContext):
    """What a workflow function receives. Primitives are methods; names must be stable."""

    def __init__(self, run: WorkflowRun, scope: str) -> None:
        super().__init__(run.instance)
        self._run = run
        self._scope = scope
        self._seen: set[str] = set()
        self.queue: WorkflowQueue = WorkflowQueue(self)  # type: ignore[assignment]

    @property
    def scope(self) -> str:
        """The name path of this context ('' at the workflow's top level)."""
        return self._scope

    @property
    def run_id(self) -> int | None:
        """The id of the run this workflow serves (a queue's ``run=`` handler), else None."""
        state = self._run.run_state
        return state.run_id if state is not None else None

    async def run_meta(self, **fields: Any) -> dict[str, Any]:
        """Merge JSON ``fields`` into this run's ``meta`` (durably) and broadcast
        ``run_meta``; e.g. ``await ctx.run_meta(vm="fix-12")``. Idempotent on replay."""
        state = self._run.run_state
        if state is None:
            raise InvalidRequest(
                "ctx.run_meta() is only available inside a queue's run= handler", field="meta"
            )
        return await state.set_meta(fields)

    # -- bookkeeping

    def _enter(self, name: str, kind: str) -> tuple[str, HistoryRecord | None]:
        if name in self._seen:
            raise HistoryDivergedError(
                f"duplicate workflow entry name {name!r} in scope {self._scope or '<root>'!r}",
                entry=self._path(name),
            )
        _check_name(name)
        self._seen.add(name)
        path = self._path(name)
        rec = self._run.records.get(path)
        if rec is not None:
            self._run.visit(path)
            if rec.kind != kind and not (kind == "removed"):
                raise HistoryDivergedError(
                    f"history entry {path!r} was recorded as a {rec.kind}, "
                    f"but the workflow now makes it a {kind}",
                    entry=path,
                    recorded=rec.kind,
                    found=kind,
                )
        return path, rec

    def _path(self, name: str) -> str:
        return f"{self._scope}/{name}" if self._scope else name

    def _finish(self) -> None:
        self._run.finish_scope(self._scope)

    # -- step

    async def step(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        timeout: float | timedelta | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_base: float = DEFAULT_BACKOFF_BASE,
        retry_backoff_max: float = DEFAULT_BACKOFF_MAX,
        rollback: Callable[[WorkflowContext, Any], Any] | None = None,
    ) -> Any:
        """Run ``fn()`` once, durably: its JSON output is committed before this returns.

        Failures retry with exponential backoff (durable) up to ``max_retries``
        times, then raise :class:`StepExhaustedError`; a :class:`CriticalError`
        fails at once. ``rollback(ctx, output)`` runs if the workflow later fails
        unrecoverably after a ``rollback_checkpoint``.
        """
        path, rec = self._enter(name, "step")
        run = self._run
        if rec is not None:
            if rec.status in ("completed", "rolled_back"):
                value = json.loads(rec.output) if rec.output is not None else None
                if rollback is not None:
                    run.rollback_stack.append((path, rollback, value))
                return value
            if rec.status == "failed":
                raise run.stored_error(rec)
        attempts = rec.attempts if rec is not None else 0
        retry_at: float | None = None
        first_started = rec.started_at if rec is not None else None
        if rec is not None and rec.status == "retrying" and rec.meta:
            retry_at = json.loads(rec.meta).get("retry_at")
        limit = seconds(timeout) if timeout is not None else None
        inst = self._instance
        while True:
            if retry_at is not None:
                await run.sleep_until(retry_at)
            started = time.time()
            if first_started is None:
                first_started = started
            tx = Tx()
            token = current_tx.set(tx)
            run.running_steps[path] = started
            run.step_event(path, "running", attempts + 1)
            try:
                result = fn()
                # isawaitable's ABC check is slow; a coroutine or None skips it.
                if type(result) is CoroutineType or (
                    result is not None and inspect.isawaitable(result)
                ):
                    if limit is not None:
                        result = await asyncio.wait_for(result, limit)
                    else:
                        result = await result
            except asyncio.CancelledError:
                # Interrupted (a cancelled run, or the actor stopping): like a failed
                # attempt, it changes nothing.
                inst.restore_state()
                raise
            except CriticalError as exc:
                inst.restore_state()
                await self._record_failure(path, attempts + 1, first_started, exc, critical=True)
                run.step_event(path, "failed", attempts + 1, exc)
                raise
            except Exception as exc:
                # A failed attempt changes nothing: its half-made state changes would
                # otherwise ride along with the next commit (a retry would apply them twice).
                inst.restore_state()
                STEP_SECONDS.observe(time.time() - started, actor=inst.name, outcome="failed")
                attempts += 1
                err: BaseException = exc
                if isinstance(exc, TimeoutError) and limit is not None:
                    err = StepTimeoutError(
                        f"step {path!r} timed out after {limit}s", step=path, timeout=limit
                    )
                if attempts > max_retries:
                    await self._record_failure(path, attempts, first_started, err)
                    run.step_event(path, "failed", attempts, err)
                    raise StepExhaustedError(
                        f"step {path!r} failed after {attempts} attempts: {err}",
                        step=path,
                        attempts=attempts,
                        last_error=type(err).__name__,
                    ) from exc
                delay = min(retry_backoff_max, retry_backoff_base * (2 ** (attempts - 1)))
                retry_at = time.time() + delay
                await self.store.submit(
                    [
                        run.put(
                            path,
                            "step",
                            "retrying",
                            attempts=attempts,
                            started_at=first_started,
                            error=_error_json(err),
                            meta=_dumps({"retry_at": retry_at}),
                        )
                    ]
                )
                run.step_event(path, "retrying", attempts, err)
                continue
            finally:
                current_tx.reset(token)
                tx.closed = True
                run.running_steps.pop(path, None)
            try:
                output = _dumps(result)
            except (TypeError, ValueError) as exc:
                err = NotSerializable(
                    f"step {path!r} returned a value that is not JSON-serialisable: {exc}",
                    step=path,
                )
                inst.restore_state()
                await self._record_failure(path, attempts + 1, first_started, err, not_json=True)
                raise err from exc
            ops = tx.ops
            finished = time.time()
            ops.append(
                run.put(
                    path,
                    "step",
                    "completed",
                    attempts=attempts + 1,
                    started_at=first_started,
                    finished_at=finished,
                    output=output,
                )
            )
            ops.extend(inst.state_ops())
            await self.store.submit_await(ops)
            run.step_event(path, "completed", attempts + 1)
            STEP_SECONDS.observe(time.time() - started, actor=inst.name, outcome="completed")
            if tx.after:
                tx.run_after()
            value = (
                result
                if result is None or isinstance(result, (str, int, float))
                else (json.loads(output))
            )
            if rollback is not None:
                run.rollback_stack.append((path, rollback, value))
            return value

    async def _record_failure(
        self,
        path: str,
        attempts: int,
        started: float | None,
        exc: BaseException,
        *,
        critical: bool = False,
        not_json: bool = False,
    ) -> None:
        extra: dict[str, Any] = {}
        if critical:
            extra["critical"] = True
        if not_json:
            extra["not_json"] = True
        await self.store.submit(
            [
                self._run.put(
                    path,
                    "step",
                    "failed",
                    attempts=attempts,
                    started_at=started,
                    finished_at=time.time(),
                    error=_error_json(exc, **extra),
                )
            ]
        )

    # -- loop

    async def loop(
        self,
        name: str,
        run: Callable[..., Awaitable[Any]],
        *,
        state: Any = None,
        history_keep: int = DEFAULT_HISTORY_KEEP,
    ) -> Any:
        """Run ``run(ctx)`` (or ``run(ctx, state)``) until it returns ``Loop.break_(value)``.

        Each iteration is its own scope (``name/~N``); only the last
        ``history_keep`` finished iterations stay in history, so an endless loop
        keeps a bounded history.
        """
        path, rec = self._enter(name, "loop")
        wf = self._run
        if rec is not None and rec.status == "completed":
            return json.loads(rec.output) if rec.output is not None else None
        if rec is not None and rec.meta:
            meta = json.loads(rec.meta)
            iteration, loop_state = meta["iteration"], meta.get("state")
            started = rec.started_at
        else:
            iteration, loop_state, started = 0, state, time.time()
            self.store.submit_nowait(
                [
                    wf.put(
                        path,
                        "loop",
                        "running",
                        started_at=started,
                        meta=self._loop_meta(path, 0, loop_state),
                    )
                ]
            )
        takes_state = _arity(run) >= 2
        while True:
            scope = f"{path}/~{iteration}"
            ictx = WorkflowContext(wf, scope)
            result = await (run(ictx, loop_state) if takes_state else run(ictx))
            ictx._finish()
            if isinstance(result, LoopBreak):
                try:
                    output = _dumps(result.value)
                except (TypeError, ValueError) as exc:
                    raise NotSerializable(
                        f"loop {path!r} broke with a value that is not JSON: {exc}", loop=path
                    ) from exc
                ops = [
                    wf.put(
                        path,
                        "loop",
                        "completed",
                        attempts=iteration + 1,
                        started_at=started,
                        finished_at=time.time(),
                        output=output,
                        meta=self._loop_meta(path, iteration, loop_state),
                    )
                ]
                await self.store.submit(ops)
                return json.loads(output)
            if isinstance(result, LoopContinue):
                loop_state = result.state
            elif result is not None:
                raise WorkflowError(
                    f"loop {path!r} body must return Loop.continue_(...) or Loop.break_(...), "
                    f"not {result!r}",
                    loop=path,
                )
            iteration += 1
            ops = [
                wf.put(
                    path,
                    "loop",
                    "running",
                    attempts=iteration,
                    started_at=started,
                    meta=self._loop_meta(path, iteration, loop_state),
                )
            ]
            old = iteration - 1 - history_keep
            if old >= 0:
                ops.append(wf.forget_tree(f"{path}/~{old}"))
            self.store.submit_nowait(ops)

    @staticmethod
    def _loop_meta(path: str, iteration: int, state: Any) -> str:
        try:
            return _dumps({"iteration": iteration, "state": state})
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"loop {path!r} state is not JSON-serialisable: {exc}", loop=path
            ) from exc

    # -- timers

    async def sleep(self, name: str, duration: float | timedelta) -> None:
        """Durable sleep of ``duration`` seconds; the deadline survives restarts."""
        path, rec = self._enter(name, "sleep")
        await self._sleep(path, rec, lambda: time.time() + seconds(duration))

    async def sleep_until(self, name: str, when: float | datetime) -> None:
        """Durable sleep until ``when`` (epoch seconds or an aware datetime)."""
        path, rec = self._enter(name, "sleep")
        await self._sleep(path, rec, lambda: epoch(when))

    async def _sleep(
        self, path: str, rec: HistoryRecord | None, deadline: Callable[[], float]
    ) -> None:
        wf = self._run
        if rec is not None and rec.status == "completed":
            return
        if rec is not None and rec.meta:
            wake_at = json.loads(rec.meta)["wake_at"]
            started = rec.started_at
        else:
            wake_at = deadline()
            started = time.time()
            self.store.submit_nowait(
                [
                    wf.put(
                        path,
                        "sleep",
                        "waiting",
                        started_at=started,
                        meta=_dumps({"wake_at": wake_at}),
                    )
                ]
            )
        await wf.sleep_until(wake_at)
        self.store.submit_nowait(
            [
                wf.put(
                    path,
                    "sleep",
                    "completed",
                    started_at=started,
                    finished_at=time.time(),
                    meta=_dumps({"wake_at": wake_at}),
                )
            ]
        )

    # -- join / race

    async def join(self, name: str, branches: Mapping[str, Any]) -> dict[str, Any]:
        """Run branches concurrently; return ``{branch: value}``. Failures are collected
        and raised together as :class:`JoinError` once every branch has finished."""
        path, rec = self._enter(name, "join")
        if rec is not None and rec.status == "completed":
            return json.loads(rec.output or "{}")
        fns = {bname: _branch_fn(b) for bname, b in branches.items()}
        for bname in fns:
            _check_name(bname)
        started = time.time()
        tasks = {
            bname: asyncio.ensure_future(self._run_branch(f"{path}/{bname}", fn))
            for bname, fn in fns.items()
        }
        try:
            with self._run.waiting(None):
                await asyncio.wait(tasks.values())
        except asyncio.CancelledError:
            # Cancelled (the run is): the branches go too, after their clean-up.
            for t in tasks.values():
                t.cancel()
            await asyncio.wait(tasks.values())
            raise
        errors = {b: t.exception() for b, t in tasks.items() if t.exception() is not None}
        if errors:
            first = next(iter(errors.values()))
            if isinstance(first, HistoryDivergedError):
                raise first
            raise JoinError(
                f"join {path!r}: {len(errors)} of {len(tasks)} branches failed: "
                + "; ".join(f"{b}: {e}" for b, e in errors.items()),
                {b: e for b, e in errors.items() if e is not None},
            )
        results = {b: t.result() for b, t in tasks.items()}
        try:
            output = _dumps(results)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(f"join {path!r} results are not JSON: {exc}", join=path) from exc
        await self.store.submit(
            [
                self._run.put(
                    path,
                    "join",
                    "completed",
                    started_at=started,
                    finished_at=time.time(),
                    output=output,
                )
            ]
        )
        return json.loads(output)

    async def parallel(
        self,
        tasks: Sequence[AgentTask | dict[str, Any]],
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = False,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run agent tasks concurrently, each in its own vm (docs/workflows.md, "Agent
        tasks in your own orchestrator"); their step results in order."""
        from ..dag.agent import parallel

        return await parallel(
            self, tasks, max_concurrency=max_concurrency, fail_fast=fail_fast, name=name
        )

    @overload
    async def race(
        self, name: str, branches: Sequence[Any] | Mapping[str, Any], /
    ) -> RaceResult[Any]: ...

    @overload
    async def race(
        self, tasks: Sequence[AgentTask | dict[str, Any]], /, *, name: str | None = None
    ) -> RaceResult[dict[str, Any]]: ...

    async def race(
        self,
        first: str | Sequence[AgentTask | dict[str, Any]],
        branches: Sequence[Any] | Mapping[str, Any] | None = None,
        /,
        *,
        name: str | None = None,
    ) -> RaceResult[Any]:
        """Run branches concurrently; the first to succeed wins and the rest are
        cancelled. The winner is recorded, so replay returns the same result.
        ``ctx.race([AgentTask, ...], name=None)`` races agent tasks (docs/workflows.md)."""
        if not isinstance(first, str):
            from ..dag.agent import race

            return await race(self, first, name=name)
        if branches is None:
            raise InvalidRequest("ctx.race(name, branches): branches are missing", field="branches")
        name = first
        path, rec = self._enter(name, "race")
        if rec is not None and rec.status == "completed":
            out = json.loads(rec.output or "{}")
            return RaceResult(out["winner"], out["value"])
        named = _race_branches(branches)
        started = time.time()
        tasks = {
            asyncio.ensure_future(self._run_branch(f"{path}/{bname}", fn)): bname
            for bname, fn in named
        }
        errors: dict[str, BaseException] = {}
        winner: tuple[str, Any] | None = None
        pending = set(tasks)
        try:
            with self._run.waiting(None):
                while pending and winner is None:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        exc = t.exception()
                        if exc is None and winner is None:
                            winner = (tasks[t], t.result())
                        elif exc is not None:
                            if isinstance(exc, HistoryDivergedError):
                                raise exc
                            errors[tasks[t]] = exc
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        if winner is None:
            raise RaceError(
                f"race {path!r}: every branch failed: "
                + "; ".join(f"{b}: {e}" for b, e in errors.items()),
                errors,
            )
        try:
            output = _dumps({"winner": winner[0], "value": winner[1]})
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"race {path!r} winner value is not JSON: {exc}", race=path
            ) from exc
        await self.store.submit(
            [
                self._run.put(
                    path,
                    "race",
                    "completed",
                    started_at=started,
                    finished_at=time.time(),
                    output=output,
                )
            ]
        )
        out = json.loads(output)
        return RaceResult(out["winner"], out["value"])

    async def _run_branch(self, scope: str, fn: Callable[..., Awaitable[Any]]) -> Any:
        inst = self._instance
        inst.fiber_started()
        try:
            bctx = WorkflowContext(self._run, scope)
            result = fn(bctx)
            if inspect.isawaitable(result):
                result = await result
            bctx._finish()
            return result
        finally:
            inst.fiber_ended()

    # -- rollback / migrations

    async def rollback_checkpoint(self, name: str) -> None:
        """Start a rollback region: if the workflow later fails unrecoverably, the
        rollback handlers of steps completed after this point run, newest first."""
        path, rec = self._enter(name, "rollback_checkpoint")
        if rec is None:
            now = time.time()
            self.store.submit_nowait(
                [
                    self._run.put(
                        path, "rollback_checkpoint", "completed", started_at=now, finished_at=now
                    )
                ]
            )
        self._run.rollback_stack.clear()

    async def removed(self, name: str, kind: str) -> None:
        """Declare that an entry of type ``kind`` named ``name`` was removed from the
        code, so histories recorded before the change still replay."""
        path, rec = self._enter(name, "removed")
        if rec is None:
            now = time.time()
            self.store.submit_nowait(
                [
                    self._run.put(
                        path,
                        "removed",
                        "completed",
                        started_at=now,
                        finished_at=now,
                        meta=_dumps({"kind": kind}),
                    )
                ]
            )
        elif rec.kind not in (kind, "removed"):
            raise HistoryDivergedError(
                f"history entry {path!r} was recorded as a {rec.kind}, "
                f"but ctx.removed() declares it was a {kind}",
                entry=path,
                recorded=rec.kind,
                found=kind,
            )


def _branch_fn(branch: Any) -> Callable[..., Any]:
    if callable(branch):
        return branch
    if isinstance(branch, Mapping) and callable(branch.get("run")):
        return branch["run"]
    raise InvalidRequest(f"a branch must be a callable or {{'run': callable}}, not {branch!r}")


def _race_branches(
    branches: Sequence[Any] | Mapping[str, Any],
) -> list[tuple[str, Callable[..., Any]]]:
    if isinstance(branches, Mapping):
        out = [(n, _branch_fn(b)) for n, b in branches.items()]
    else:
        out = []
        for b in branches:
            if isinstance(b, tuple) and len(b) == 2:
                out.append((b[0], _branch_fn(b[1])))
            elif isinstance(b, Mapping) and "name" in b:
                out.append((b["name"], _branch_fn(b)))
            else:
                raise InvalidRequest(
                    f"a race branch must be (name, fn) or {{'name', 'run'}}, not {b!r}"
                )
    for n, _ in out:
        _check_name(n)
    return out


# --- queue receives inside a workflow -------------------------------------------------------


class WorkflowQueue:
    """``ctx.queue``: durable receives recorded in history."""

    def __init__(self, ctx: WorkflowContext) -> None:
        self._ctx = ctx

    async def next(
        self,
        name: str,
        *,
        names: Sequence[str] | None = None,
        completable: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Message | None:
        """Wait for the next message (of ``names``, if given); None after ``timeout``."""
        msgs = await self._receive(name, names, 1, completable, timeout)
        return msgs[0] if msgs else None

    async def next_batch(
        self,
        name: str,
        *,
        count: int,
        names: Sequence[str] | None = None,
        completable: bool = False,
        timeout: float | timedelta | None = None,
    ) -> list[Message]:
        """Wait for at least one message and take up to ``count`` at once."""
        if count < 1:
            raise InvalidRequest("count must be at least 1", field="count")
        return await self._receive(name, names, count, completable, timeout)

    async def send(self, queue: str, body: Any = None) -> int:
        """Send to this actor's own queue (inside a step it commits with the step)."""
        return await self._ctx._instance.send_to_self(queue, body)

    async def _receive(
        self,
        name: str,
        names: Sequence[str] | None,
        count: int,
        completable: bool,
        timeout: float | timedelta | None,
    ) -> list[Message]:
        ctx = self._ctx
        wf = ctx._run
        inst = ctx._instance
        path, rec = ctx._enter(name, "message")
        if rec is not None and rec.status == "completed":
            out = json.loads(rec.output or "[]")
            return [
                Message(inst, m["id"], m["queue"], m["body"], m.get("completable", False))
                for m in out
            ]
        if names is not None:
            names = list(names)
            inst.check_queue_names(names)
        deadline: float | None = None
        started = time.time()
        if rec is not None and rec.meta:
            deadline = json.loads(rec.meta).get("deadline")
            started = rec.started_at or started
        elif timeout is not None:
            deadline = started + seconds(timeout)
            # The deadline must survive a restart, or a timeout would never fire.
            ctx.store.submit_nowait(
                [
                    wf.put(
                        path,
                        "message",
                        "waiting",
                        started_at=started,
                        meta=_dumps({"deadline": deadline}),
                    )
                ]
            )
        records = inst.take_messages(names, count)
        if not records:
            with wf.waiting(deadline):
                records = await inst.wait_messages(names, count, deadline)
        out = [
            {
                "id": r.message_id,
                "queue": r.queue,
                "body": json.loads(r.body),
                "completable": completable,
            }
            for r in records
        ]
        ops = [
            wf.put(
                path,
                "message",
                "completed",
                attempts=1,
                started_at=started,
                finished_at=time.time(),
                output=_dumps(out),
            )
        ]
        msgs = []
        for r, m in zip(records, out, strict=True):
            if completable:
                inst.lease(r)
            else:
                # Recorded in history in the same commit that removes it.
                ops.append((base.DELETE_MESSAGE, r.message_id))
                inst.consumed(r.message_id)
            msgs.append(Message(inst, r.message_id, r.queue, m["body"], completable))
        ctx.store.submit_nowait(ops)
        return msgs
