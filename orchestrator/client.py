"""Clients: reach actors by name and key, in-process or (later) over HTTP.

``client.counter.get_or_create("main")`` (or ``client.actors.counter...``)
returns a handle at once; the actor is resolved (and created) on first use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ActorNotFound, RunCancelled, RunFailed
from .keys import ActorKey, KeyLike, normalize_key
from .queues import SendResult

if TYPE_CHECKING:
    from ._instance import Event
    from .engine import ActorInfo, Engine, QueuedMessage, WorkflowHistory
    from .records import RunDetail, RunInfo


class Transport(Protocol):
    """How a client reaches an engine: in-process calls or HTTP requests."""

    async def resolve(self, name: str, key: ActorKey, *, create: bool, input: Any) -> str: ...
    async def create(self, name: str, key: ActorKey, *, input: Any) -> str: ...
    async def call(self, actor_id: str, action: str, args: list[Any]) -> Any: ...
    async def send(
        self, actor_id: str, queue: str, body: Any, *, wait: bool, timeout: float | None
    ) -> SendResult: ...
    async def subscribe(self, actor_id: str, events: list[str] | None) -> EventStream: ...
    async def get_state(self, actor_id: str) -> Any: ...
    async def history(self, actor_id: str) -> WorkflowHistory: ...
    async def queue_contents(self, actor_id: str) -> list[QueuedMessage]: ...
    async def destroy(self, actor_id: str) -> None: ...
    async def list_actors(self, name: str | None) -> list[ActorInfo]: ...
    async def list_runs(
        self, actor_id: str | None, *, status: str | None, name: str | None
    ) -> list[RunInfo]: ...
    async def get_run(self, actor_id: str, run_id: int) -> RunDetail: ...
    async def cancel_run(self, actor_id: str, run_id: int) -> RunInfo: ...
    async def retry_run(self, actor_id: str, run_id: int) -> RunInfo: ...
    async def recover_workflow(self, actor_id: str) -> WorkflowHistory: ...
    async def cancel_workflow(self, actor_id: str) -> WorkflowHistory: ...


class EventStream(Protocol):
    def __aiter__(self) -> AsyncIterator[Event]: ...
    async def next(self, timeout: float | None = None) -> Event: ...
    async def close(self) -> None: ...


class InProcessTransport:
    """Calls straight into an :class:`Engine` in this process. In a cluster, a call for
    an actor another host owns (``NotOwner``) is made again over HTTP to that host;
    actors created here stay on this host (orchestrator/cluster)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _owned(self, actor_id: str, local: Any, remote: str, *args: Any, **kw: Any) -> Any:
        """``local()`` here, or the transport method ``remote`` on the owner."""
        if self.engine.cluster is None:
            return await local()
        from .cluster import in_process
        from .cluster.forwarding import forward_call, remote_transport
        from .errors import NotOwner

        try:
            with in_process():
                return await local()
        except NotOwner as exc:
            if not exc.metadata.get("owner_url") or exc.metadata.get("actor_id") is None:
                raise
            transport = await remote_transport(self.engine, exc, actor_id)
        return await forward_call(self.engine, transport, remote, actor_id, *args, **kw)

    async def resolve(self, name: str, key: ActorKey, *, create: bool, input: Any) -> str:
        if self.engine.cluster is None:
            return await self.engine.resolve(name, key, create=create, input=input)
        from .cluster import in_process

        with in_process():
            return await self.engine.resolve(name, key, create=create, input=input)

    async def create(self, name: str, key: ActorKey, *, input: Any) -> str:
        if self.engine.cluster is None:
            return await self.engine.create(name, key, input=input)
        from .cluster import in_process

        with in_process():
            return await self.engine.create(name, key, input=input)

    async def call(self, actor_id: str, action: str, args: list[Any]) -> Any:
        if self.engine.cluster is None:
            return await self.engine.call(actor_id, action, args)
        return await self._owned(
            actor_id, lambda: self.engine.call(actor_id, action, args), "call", action, args
        )

    async def send(
        self, actor_id: str, queue: str, body: Any, *, wait: bool, timeout: float | None
    ) -> SendResult:
        if self.engine.cluster is None:
            return await self.engine.send(actor_id, queue, body, wait=wait, timeout=timeout)
        result: SendResult = await self._owned(
            actor_id,
            lambda: self.engine.send(actor_id, queue, body, wait=wait, timeout=timeout),
            "send",
            queue,
            body,
            wait=wait,
            timeout=timeout,
        )
        return result

    async def subscribe(self, actor_id: str, events: list[str] | None) -> EventStream:
        stream: EventStream = await self._owned(
            actor_id, lambda: self.engine.subscribe(actor_id, events), "subscribe", events
        )
        return stream

    async def get_state(self, actor_id: str) -> Any:
        return await self.engine.get_state(actor_id)

    async def history(self, actor_id: str) -> WorkflowHistory:
        return await self.engine.history(actor_id)

    async def queue_contents(self, actor_id: str) -> list[QueuedMessage]:
        return await self.engine.queue_contents(actor_id)

    async def destroy(self, actor_id: str) -> None:
        await self._owned(actor_id, lambda: self.engine.destroy(actor_id), "destroy")

    async def list_actors(self, name: str | None) -> list[ActorInfo]:
        return await self.engine.list_actors(name)

    async def list_runs(
        self, actor_id: str | None, *, status: str | None, name: str | None
    ) -> list[RunInfo]:
        return await self.engine.list_runs(actor_id, status=status, name=name)

    async def get_run(self, actor_id: str, run_id: int) -> RunDetail:
        return await self.engine.get_run(actor_id, run_id)

    async def cancel_run(self, actor_id: str, run_id: int) -> RunInfo:
        out: RunInfo = await self._owned(
            actor_id, lambda: self.engine.cancel_run(actor_id, run_id), "cancel_run", run_id
        )
        return out

    async def retry_run(self, actor_id: str, run_id: int) -> RunInfo:
        out: RunInfo = await self._owned(
            actor_id, lambda: self.engine.retry_run(actor_id, run_id), "retry_run", run_id
        )
        return out

    async def recover_workflow(self, actor_id: str) -> WorkflowHistory:
        out: WorkflowHistory = await self._owned(
            actor_id, lambda: self.engine.recover_workflow(actor_id), "recover_workflow"
        )
        return out

    async def cancel_workflow(self, actor_id: str) -> WorkflowHistory:
        out: WorkflowHistory = await self._owned(
            actor_id, lambda: self.engine.cancel_workflow(actor_id), "cancel_workflow"
        )
        return out


def check_send_result(result: SendResult) -> SendResult:
    """``raise_on_failure``: a failed run raises :class:`RunFailed` (its stored error in
    ``metadata["error"]``), a cancelled one :class:`RunCancelled`."""
    if result.status == "failed":
        err = result.error or {}
        raise RunFailed(
            f"run {result.message_id} failed: {err.get('message', 'unknown error')}",
            run_id=result.message_id,
            error=err,
        )
    if result.status == "cancelled":
        raise RunCancelled(f"run {result.message_id} was cancelled", run_id=result.message_id)
    return result


class ActorHandle:
    """A reference to one actor. Unknown attributes are its actions:
    ``await handle.increment(5)`` is ``await handle.call("increment", 5)``."""

    def __init__(
        self,
        transport: Transport,
        name: str,
        key: ActorKey,
        *,
        create: bool,
        input: Any = None,
        actor_id: str | None = None,
    ) -> None:
        self._transport = transport
        self.name = name
        self.key = key
        self._create = create
        self._input = input
        self._actor_id = actor_id

    def __repr__(self) -> str:
        return f"ActorHandle({self.name!r}, {list(self.key)!r})"

    async def resolve(self) -> str:
        """The actor id (creating the actor for a ``get_or_create`` handle)."""
        if self._actor_id is None:
            self._actor_id = await self._transport.resolve(
                self.name, self.key, create=self._create, input=self._input
            )
        return self._actor_id

    async def _with_id(self, fn: Any) -> Any:
        actor_id = await self.resolve()
        try:
            return await fn(actor_id)
        except ActorNotFound:
            if not self._create:
                raise
            # Destroyed since we resolved it: a get_or_create handle makes a new one.
            self._actor_id = None
            return await fn(await self.resolve())

    async def call(self, action: str, *args: Any, **options: Any) -> Any:
        """Call an action. Keyword arguments travel as one trailing options object:
        ``exec("ls", cwd="/tmp")`` sends the arguments ``["ls", {"cwd": "/tmp"}]``,
        exactly what an HTTP caller would send."""
        arglist = [*args, options] if options else list(args)
        return await self._with_id(lambda aid: self._transport.call(aid, action, arglist))

    async def send(
        self,
        queue: str,
        body: Any = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        raise_on_failure: bool = False,
    ) -> SendResult:
        """Enqueue ``body`` on ``queue``. With ``wait=True`` wait up to ``timeout``
        seconds for the consumer to complete it (or, on a run queue, for the run to
        fail or be cancelled; ``raise_on_failure`` raises RunFailed/RunCancelled then)."""
        result: SendResult = await self._with_id(
            lambda aid: self._transport.send(aid, queue, body, wait=wait, timeout=timeout)
        )
        return check_send_result(result) if raise_on_failure else result

    async def connect(self, events: list[str] | None = None) -> EventStream:
        """Subscribe to this actor's broadcasts (async-iterate; ``close()`` when done)."""
        return await self._with_id(lambda aid: self._transport.subscribe(aid, events))

    subscribe = connect

    async def fetch_state(self) -> Any:
        """The actor's last committed state."""
        return await self._with_id(self._transport.get_state)

    async def history(self) -> WorkflowHistory:
        return await self._with_id(self._transport.history)

    async def queue_contents(self) -> list[QueuedMessage]:
        return await self._with_id(self._transport.queue_contents)

    async def destroy(self) -> None:
        await self._transport.destroy(await self.resolve())
        self._actor_id = None

    # -- runs: messages of queues declared with run=

    async def runs(self, status: str | None = None) -> list[RunInfo]:
        """This actor's runs, newest first (only ``status`` ones if given)."""
        return await self._with_id(
            lambda aid: self._transport.list_runs(aid, status=status, name=None)
        )

    async def run(self, run_id: int) -> RunDetail:
        """One run with its input, result or error, and its history."""
        return await self._with_id(lambda aid: self._transport.get_run(aid, run_id))

    async def cancel_run(self, run_id: int) -> RunInfo:
        return await self._with_id(lambda aid: self._transport.cancel_run(aid, run_id))

    async def retry_run(self, run_id: int) -> RunInfo:
        return await self._with_id(lambda aid: self._transport.retry_run(aid, run_id))

    async def recover_workflow(self) -> WorkflowHistory:
        """Re-run this actor's failed main workflow from the step that failed."""
        return await self._with_id(self._transport.recover_workflow)

    async def cancel_workflow(self) -> WorkflowHistory:
        return await self._with_id(self._transport.cancel_workflow)

    def __getattr__(self, action: str) -> Any:
        if action.startswith("_"):
            raise AttributeError(action)

        async def call_action(*args: Any, **options: Any) -> Any:
            return await self.call(action, *args, **options)

        call_action.__name__ = action
        return call_action


class ActorAccessor:
    """``client.<name>``: ways to get handles to actors of one type."""

    def __init__(self, transport: Transport, name: str) -> None:
        self._transport = transport
        self.name = name

    def get_or_create(self, key: KeyLike = (), *, input: Any = None) -> ActorHandle:
        return ActorHandle(self._transport, self.name, normalize_key(key), create=True, input=input)

    def get(self, key: KeyLike = ()) -> ActorHandle:
        """A handle to an existing actor; using it raises ActorNotFound if there is none."""
        return ActorHandle(self._transport, self.name, normalize_key(key), create=False)

    async def create(self, key: KeyLike = (), *, input: Any = None) -> ActorHandle:
        """Create the actor now (ActorAlreadyExists if the key is taken)."""
        k = normalize_key(key)
        actor_id = await self._transport.create(self.name, k, input=input)
        return ActorHandle(self._transport, self.name, k, create=False, actor_id=actor_id)

    async def list(self) -> list[ActorInfo]:
        return await self._transport.list_actors(self.name)


class WorkflowsAccessor(ActorAccessor):
    """``client.workflows``: DAG workflows (the ``workflows`` actor, one per name).

    Works over any transport: it only calls actions, sends to the ``run`` queue and
    reads the run record (docs/workflows.md)."""

    async def put(self, definition: Any) -> dict[str, Any]:
        """Register a definition (a dict, JSON text or a ``WorkflowDefinition``) →
        ``{"name", "version", "created"}``."""
        from .dag import load_definition

        data = _definition_dict(definition)
        defn = load_definition(data)
        out: dict[str, Any] = await self.get_or_create([defn.name]).put_definition(data)
        return out

    async def definition(self, name: str, version: int | None = None) -> dict[str, Any]:
        args = [version] if version is not None else []
        out: dict[str, Any] = await ActorAccessor.get(self, [name]).call("get_definition", *args)
        return out

    async def run(
        self,
        definition_or_name: Any,
        params: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
        version: int | None = None,
        vm_key: str | None = None,
        repo: str | None = None,
        keep_vm: str | None = None,
    ) -> dict[str, Any]:
        """Run a registered workflow (by name) or a definition given inline; returns
        the run's view (``run_id``, ``status``, ``steps``...). ``wait``: until it has
        finished (or ``timeout`` seconds passed)."""
        from .dag import bind_params, load_definition

        if isinstance(definition_or_name, str) and not definition_or_name.lstrip().startswith("{"):
            handle = ActorAccessor.get(self, [definition_or_name])
            args = [version] if version is not None else []
            data = await handle.call("get_definition", *args)
        else:
            data = _definition_dict(definition_or_name)
            handle = self.get_or_create([load_definition(data).name])
        bind_params(load_definition(data), params or {})  # InvalidRequest naming params.<name>
        body: dict[str, Any] = {"definition": data, "params": params or {}}
        extra = {"vm_key": vm_key, "repo": repo, "keep_vm": keep_vm}
        body.update({k: v for k, v in extra.items() if v is not None})
        sent = await handle.send("run", body, wait=wait, timeout=timeout)
        if sent.message_id is None:  # never: a send always names its message
            raise RuntimeError("the run's send answered no message id")
        return await self._view(handle, sent.message_id)

    async def get(self, name: str, run_id: int) -> dict[str, Any]:  # type: ignore[override]
        """The view of one run of workflow ``name``."""
        return await self._view(ActorAccessor.get(self, [name]), run_id)

    async def runs(self, name: str) -> list[RunInfo]:
        return await ActorAccessor.get(self, [name]).runs()

    async def cancel(self, name: str, run_id: int) -> dict[str, Any]:
        handle = ActorAccessor.get(self, [name])
        await handle.cancel_run(run_id)
        return await self._view(handle, run_id)

    async def retry(self, name: str, run_id: int) -> dict[str, Any]:
        handle = ActorAccessor.get(self, [name])
        await handle.retry_run(run_id)
        return await self._view(handle, run_id)

    @staticmethod
    async def _view(handle: ActorHandle, run_id: int) -> dict[str, Any]:
        from .dag.results import workflow_view

        return workflow_view(await handle.run(run_id))


def _definition_dict(definition: Any) -> dict[str, Any]:
    if isinstance(definition, str | bytes):
        import json

        data = json.loads(definition)
    elif hasattr(definition, "model_dump"):
        data = definition.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    else:
        data = definition
    if not isinstance(data, dict):
        from .errors import InvalidRequest

        raise InvalidRequest(
            "definition: a workflow definition is a JSON object", field="definition"
        )
    return data


class Client:
    """Entry point: ``client.counter`` / ``client.actors.counter`` → accessor."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @property
    def actors(self) -> Client:
        return self

    @property
    def transport(self) -> Transport:
        return self._transport

    async def list_actors(self, name: str | None = None) -> list[ActorInfo]:
        return await self._transport.list_actors(name)

    async def list_runs(
        self, *, status: str | None = None, name: str | None = None
    ) -> list[RunInfo]:
        """Runs across actors, newest first (e.g. ``status="running"``)."""
        return await self._transport.list_runs(None, status=status, name=name)

    @property
    def workflows(self) -> WorkflowsAccessor:
        """DAG workflows: ``await client.workflows.run(definition, params)``."""
        return WorkflowsAccessor(self._transport, "workflows")

    def __getattr__(self, name: str) -> ActorAccessor:
        if name.startswith("_"):
            raise AttributeError(name)
        return ActorAccessor(self._transport, name)

    def __getitem__(self, name: str) -> ActorAccessor:
        return ActorAccessor(self._transport, name)
