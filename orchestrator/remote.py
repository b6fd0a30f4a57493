"""The client over HTTP: ``create_client(url, token=)`` returns the same
:class:`~orchestrator.client.Client` as ``engine.client()``, on an :class:`HttpTransport`.

    client = create_client("http://127.0.0.1:6420")
    handle = client.automator.get_or_create(["main"])
    await handle.send("fixBug", {"repo": ..., "issue": ...})

Errors come back as the same typed exceptions (``ActorNotFound``, ``QueueFull``, ...),
rebuilt from the server's ``{"error": {"group", "code", ...}}``; bytes come back as
``bytes``. :func:`create_sync_client` wraps it for code without an event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import httpx

from ._instance import Event
from .client import ActorHandle, Client, EventStream
from .engine import ActorInfo, QueuedMessage, WorkflowHistory
from .errors import ActorNotFound, AgentVMError
from .keys import ActorKey, KeyLike, encode_key_path, normalize_key
from .queues import SendResult
from .records import RunDetail, RunInfo
from .repo_upload import upload_local_repo
from .wire import from_wire, to_wire

DEFAULT_URL = "http://127.0.0.1:6420"

T = TypeVar("T")

# --- errors --------------------------------------------------------------------------


def _subclasses(cls: type[AgentVMError]) -> Iterator[type[AgentVMError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def error_from_wire(detail: dict[str, Any], status: int) -> AgentVMError:
    """Rebuild the typed exception for ``{"group", "code", "message", "metadata"}``."""
    group = str(detail.get("group", "engine"))
    code = str(detail.get("code", "error"))
    message = str(detail.get("message", f"HTTP {status}"))
    metadata = detail.get("metadata") or {}
    if not isinstance(metadata, dict):
        metadata = {"metadata": metadata}
    cls: type[AgentVMError] = AgentVMError
    for candidate in _subclasses(AgentVMError):
        if candidate.group == group and candidate.code == code:
            cls = candidate
            break
    exc = cls.__new__(cls)
    AgentVMError.__init__(exc, message, **metadata)
    if cls is AgentVMError:
        exc.group = group
        exc.code = code
    exc.http_status = status
    if not hasattr(exc, "errors"):
        exc.errors = {}  # type: ignore[attr-defined]  # JoinError/RaceError carry branch errors
    return exc


def raise_for_error(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        detail = resp.json()["error"]
        if not isinstance(detail, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        detail = {
            "group": "http",
            "code": str(resp.status_code),
            "message": f"HTTP {resp.status_code}: {resp.text[:500]}",
        }
    raise error_from_wire(detail, resp.status_code)


# --- events ----------------------------------------------------------------------------


class HttpEventStream:
    """Broadcasts read from the server-sent events route."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._lines = response.aiter_lines()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self.closed:
            raise StopAsyncIteration
        name = "message"
        data: list[str] = []
        try:
            async for line in self._lines:
                if line == "":
                    if data:
                        return Event(name, from_wire(json.loads("\n".join(data))))
                    name = "message"
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.StreamClosed):
            pass
        await self.close()
        raise StopAsyncIteration

    async def next(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (TimeoutError)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._response.aclose()

    async def __aenter__(self) -> HttpEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- transport --------------------------------------------------------------------------


class HttpTransport:
    """The :class:`~orchestrator.client.Transport` protocol over the HTTP contract."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float | None = None,
        client: httpx.AsyncClient | None = None,
        upload_repos: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        # A local "repo" path in a message body is uploaded (see repo_upload.py).
        self.upload_repos = upload_repos
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = client or httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )
        # actor_id → (name, key, get-or-create?) learned from resolve/create.
        self._refs: dict[str, tuple[str, ActorKey, bool]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def _actor_path(self, name: str, key: ActorKey) -> str:
        encoded = encode_key_path(key)
        if encoded == "":
            from .errors import InvalidRequest

            raise InvalidRequest("an actor key must have a non-empty part to be used over HTTP")
        return f"/actors/{name}/{encoded}"

    def _ref(self, actor_id: str) -> tuple[str, ActorKey, bool]:
        ref = self._refs.get(actor_id)
        if ref is None:
            raise ActorNotFound(f"actor id {actor_id!r} was not resolved through this client")
        return ref

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self._http.request(method, path, **kw)
        raise_for_error(resp)
        return resp.json()

    async def resolve(self, name: str, key: ActorKey, *, create: bool, input: Any) -> str:
        path = self._actor_path(name, key)
        if create:
            data = await self._request("POST", path, json={"input": to_wire(input)})
        else:
            data = await self._request("GET", path)
        actor_id = str(data["actor_id"])
        self._refs[actor_id] = (name, key, create)
        return actor_id

    async def create(self, name: str, key: ActorKey, *, input: Any) -> str:
        path = self._actor_path(name, key)
        data = await self._request(
            "POST", path, params={"if_exists": "error"}, json={"input": to_wire(input)}
        )
        actor_id = str(data["actor_id"])
        self._refs[actor_id] = (name, key, False)
        return actor_id

    def _params(self, create: bool) -> dict[str, str]:
        return {} if create else {"create": "false"}

    async def call(self, actor_id: str, action: str, args: list[Any]) -> Any:
        name, key, create = self._ref(actor_id)
        data = await self._request(
            "POST",
            f"{self._actor_path(name, key)}/actions/{action}",
            params=self._params(create),
            json={"args": to_wire(args)},
        )
        return from_wire(data.get("output"), where="output")

    async def send(
        self, actor_id: str, queue: str, body: Any, *, wait: bool, timeout: float | None
    ) -> SendResult:
        name, key, create = self._ref(actor_id)
        if self.upload_repos:
            body = await upload_local_repo(self._http, body)
        payload: dict[str, Any] = {"body": to_wire(body), "wait": wait}
        if wait and timeout is not None:
            payload["timeout_ms"] = max(0, round(timeout * 1000))
        data = await self._request(
            "POST",
            f"{self._actor_path(name, key)}/queues/{queue}",
            params=self._params(create),
            json=payload,
        )
        return SendResult(
            status=data["status"],
            message_id=data.get("message_id"),
            response=from_wire(data.get("response"), where="response"),
            error=data.get("error"),
        )

    async def subscribe(self, actor_id: str, events: list[str] | None) -> EventStream:
        name, key, create = self._ref(actor_id)
        params = self._params(create)
        if events:
            params["events"] = ",".join(events)
        request = self._http.build_request(
            "GET",
            f"{self._actor_path(name, key)}/events",
            params=params,
            timeout=httpx.Timeout(None, connect=10.0),
        )
        resp = await self._http.send(request, stream=True)
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
            raise_for_error(resp)
        return HttpEventStream(resp)

    async def get_state(self, actor_id: str) -> Any:
        name, key, _ = self._ref(actor_id)
        data = await self._request("GET", f"{self._actor_path(name, key)}/state")
        return from_wire(data.get("state"), where="state")

    async def history(self, actor_id: str) -> WorkflowHistory:
        name, key, _ = self._ref(actor_id)
        path = f"{self._actor_path(name, key)}/inspector/workflow-history"
        return WorkflowHistory.model_validate(await self._request("GET", path))

    async def queue_contents(self, actor_id: str) -> list[QueuedMessage]:
        name, key, _ = self._ref(actor_id)
        data = await self._request("GET", f"{self._actor_path(name, key)}/inspector/queue")
        return [QueuedMessage.model_validate(m) for m in data["messages"]]

    async def destroy(self, actor_id: str) -> None:
        name, key, _ = self._ref(actor_id)
        await self._request("DELETE", self._actor_path(name, key))
        self._refs.pop(actor_id, None)

    async def list_actors(self, name: str | None) -> list[ActorInfo]:
        data = await self._request("GET", "/actors", params={"name": name} if name else None)
        return [ActorInfo.model_validate(a) for a in data["actors"]]

    async def list_runs(
        self, actor_id: str | None, *, status: str | None, name: str | None
    ) -> list[RunInfo]:
        params = {k: v for k, v in (("status", status), ("name", name)) if v is not None}
        if actor_id is None:
            path = "/runs"
        else:
            actor, key, _ = self._ref(actor_id)
            path = f"{self._actor_path(actor, key)}/runs"
            params.pop("name", None)
        data = await self._request("GET", path, params=params or None)
        return [RunInfo.model_validate(r) for r in data["runs"]]

    def _run_path(self, actor_id: str, run_id: int) -> str:
        name, key, _ = self._ref(actor_id)
        return f"{self._actor_path(name, key)}/runs/{int(run_id)}"

    async def get_run(self, actor_id: str, run_id: int) -> RunDetail:
        data = await self._request("GET", self._run_path(actor_id, run_id))
        return RunDetail.model_validate(from_wire(data, where="run"))

    async def cancel_run(self, actor_id: str, run_id: int) -> RunInfo:
        data = await self._request("POST", self._run_path(actor_id, run_id) + "/cancel")
        return RunInfo.model_validate(data)

    async def retry_run(self, actor_id: str, run_id: int) -> RunInfo:
        data = await self._request("POST", self._run_path(actor_id, run_id) + "/retry")
        return RunInfo.model_validate(data)

    async def recover_workflow(self, actor_id: str) -> WorkflowHistory:
        name, key, _ = self._ref(actor_id)
        path = f"{self._actor_path(name, key)}/workflow/recover"
        return WorkflowHistory.model_validate(await self._request("POST", path))

    async def cancel_workflow(self, actor_id: str) -> WorkflowHistory:
        name, key, _ = self._ref(actor_id)
        path = f"{self._actor_path(name, key)}/workflow/cancel"
        return WorkflowHistory.model_validate(await self._request("POST", path))


class RemoteClient(Client):
    """A :class:`Client` over HTTP; close it (or use ``async with``) when done."""

    def __init__(self, transport: HttpTransport) -> None:
        super().__init__(transport)
        self._http_transport = transport

    @property
    def url(self) -> str:
        return self._http_transport.url

    async def aclose(self) -> None:
        await self._http_transport.aclose()

    async def __aenter__(self) -> RemoteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def create_client(
    url: str | None = None,
    token: str | None = None,
    *,
    timeout: float | None = None,
    upload_repos: bool = True,
) -> RemoteClient:
    """A client of the agentvm server at ``url`` (default ``$AGENTVM_URL`` or
    ``http://127.0.0.1:6420``), sending ``token`` (default ``$AGENTVM_TOKEN``).

    ``timeout`` bounds each request in seconds (default: none, as actions such as a
    vm's ``exec`` may run for minutes). With ``upload_repos`` a message body whose
    ``"repo"`` is an existing path on this machine is uploaded as a git bundle and
    sent as ``"blob:sha256:..."`` (the server opens no caller-chosen paths)."""
    return RemoteClient(
        HttpTransport(
            url or os.environ.get("AGENTVM_URL") or DEFAULT_URL,
            token if token is not None else os.environ.get("AGENTVM_TOKEN") or None,
            timeout=timeout,
            upload_repos=upload_repos,
        )
    )


# --- sync wrapper ---------------------------------------------------------------------------


class _LoopThread:
    """An event loop in a daemon thread, so sync callers can run the async client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class SyncEventStream:
    def __init__(self, runner: _LoopThread, stream: EventStream) -> None:
        self._runner = runner
        self._stream = stream

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return self._runner.run(self._stream.next())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float | None = None) -> Event:
        return self._runner.run(self._stream.next(timeout))

    def close(self) -> None:
        self._runner.run(self._stream.close())

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncActorHandle:
    """The blocking twin of :class:`~orchestrator.client.ActorHandle`."""

    def __init__(self, runner: _LoopThread, handle: ActorHandle) -> None:
        self._runner = runner
        self._handle = handle
        self.name = handle.name
        self.key = handle.key

    def __repr__(self) -> str:
        return f"SyncActorHandle({self.name!r}, {list(self.key)!r})"

    def resolve(self) -> str:
        return self._runner.run(self._handle.resolve())

    def call(self, action: str, *args: Any, **options: Any) -> Any:
        return self._runner.run(self._handle.call(action, *args, **options))

    def send(
        self,
        queue: str,
        body: Any = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        raise_on_failure: bool = False,
    ) -> SendResult:
        return self._runner.run(
            self._handle.send(
                queue, body, wait=wait, timeout=timeout, raise_on_failure=raise_on_failure
            )
        )

    def runs(self, status: str | None = None) -> list[RunInfo]:
        return self._runner.run(self._handle.runs(status))

    def run(self, run_id: int) -> RunDetail:
        return self._runner.run(self._handle.run(run_id))

    def cancel_run(self, run_id: int) -> RunInfo:
        return self._runner.run(self._handle.cancel_run(run_id))

    def retry_run(self, run_id: int) -> RunInfo:
        return self._runner.run(self._handle.retry_run(run_id))

    def recover_workflow(self) -> WorkflowHistory:
        return self._runner.run(self._handle.recover_workflow())

    def cancel_workflow(self) -> WorkflowHistory:
        return self._runner.run(self._handle.cancel_workflow())

    def connect(self, events: list[str] | None = None) -> SyncEventStream:
        return SyncEventStream(self._runner, self._runner.run(self._handle.connect(events)))

    subscribe = connect

    def fetch_state(self) -> Any:
        return self._runner.run(self._handle.fetch_state())

    def history(self) -> WorkflowHistory:
        return self._runner.run(self._handle.history())

    def queue_contents(self) -> list[QueuedMessage]:
        return self._runner.run(self._handle.queue_contents())

    def destroy(self) -> None:
        self._runner.run(self._handle.destroy())

    def __getattr__(self, action: str) -> Any:
        if action.startswith("_"):
            raise AttributeError(action)

        def call_action(*args: Any, **options: Any) -> Any:
            return self.call(action, *args, **options)

        call_action.__name__ = action
        return call_action


class SyncActorAccessor:
    def __init__(self, runner: _LoopThread, client: Client, name: str) -> None:
        self._runner = runner
        self._accessor = client[name]
        self.name = name

    def get_or_create(self, key: KeyLike = (), *, input: Any = None) -> SyncActorHandle:
        return SyncActorHandle(self._runner, self._accessor.get_or_create(key, input=input))

    def get(self, key: KeyLike = ()) -> SyncActorHandle:
        return SyncActorHandle(self._runner, self._accessor.get(key))

    def create(self, key: KeyLike = (), *, input: Any = None) -> SyncActorHandle:
        handle = self._runner.run(self._accessor.create(normalize_key(key), input=input))
        return SyncActorHandle(self._runner, handle)

    def list(self) -> list[ActorInfo]:
        return self._runner.run(self._accessor.list())


class SyncClient:
    """``create_sync_client(url)``: ``client.counter.get_or_create("main").increment(5)``."""

    def __init__(self, url: str | None = None, token: str | None = None, **kw: Any) -> None:
        self._runner = _LoopThread()

        async def make() -> RemoteClient:
            return create_client(url, token, **kw)

        self._client = self._runner.run(make())

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def actors(self) -> SyncClient:
        return self

    def list_actors(self, name: str | None = None) -> list[ActorInfo]:
        return self._runner.run(self._client.list_actors(name))

    def list_runs(self, *, status: str | None = None, name: str | None = None) -> list[RunInfo]:
        return self._runner.run(self._client.list_runs(status=status, name=name))

    def __getattr__(self, name: str) -> SyncActorAccessor:
        if name.startswith("_"):
            raise AttributeError(name)
        return SyncActorAccessor(self._runner, self._client, name)

    def __getitem__(self, name: str) -> SyncActorAccessor:
        return SyncActorAccessor(self._runner, self._client, name)

    def close(self) -> None:
        try:
            self._runner.run(self._client.aclose())
        finally:
            self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_sync_client(
    url: str | None = None, token: str | None = None, *, timeout: float | None = None
) -> SyncClient:
    """The blocking client (same handles, no ``await``); ``close()`` it when done."""
    return SyncClient(url, token, timeout=timeout)
