"""Run the HTTP server on an engine: ``run_server(registry)`` or ``await serve(...)``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import uvicorn

from orchestrator import Engine, EngineConfig, Registry

from .app import create_app
from .settings import ServerSettings, check_bind

log = logging.getLogger("agentvm.server")

EngineFactory = Callable[[], Engine]
T = TypeVar("T")


def load_registry(spec: str) -> Registry:
    """``"package.module:function"`` (or ``:attribute``) → a :class:`Registry`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"registry must be 'module:function', got {spec!r}")
    target: Any = getattr(importlib.import_module(module_name), attr)
    registry = target() if callable(target) and not isinstance(target, Registry) else target
    if not isinstance(registry, Registry):
        raise TypeError(f"{spec} gave {type(registry).__name__}, not a Registry")
    return registry


async def serve(
    runtime: Engine | AbstractAsyncContextManager[Engine],
    settings: ServerSettings,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    bench_routes: bool = False,
) -> None:
    """Start ``engine``, serve HTTP until ``stop`` is set (or SIGINT/SIGTERM), stop both.

    Raises :class:`~host.server.settings.InsecureBindError` before starting anything
    when bound off loopback without a token. ``on_ready(url)`` is called once the
    socket listens (with the real port when ``settings.port`` is 0).
    """
    check_bind(settings.bind, settings.token)
    if settings.bind in ("0.0.0.0", "::") and not settings.allowed_hosts:
        log.warning(
            "listening on every interface, but only loopback Host names are accepted: "
            "list the names clients use for this machine in AGENTVM_ALLOWED_HOSTS"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    # ``runtime`` is an Engine or anything that starts one (e.g. the whole host).
    async with runtime as engine:
        await _serve_engine(engine, settings, on_ready, stop, bench_routes)


async def _serve_engine(
    engine: Engine,
    settings: ServerSettings,
    on_ready: Callable[[str], None] | None,
    stop: asyncio.Event,
    bench_routes: bool,
) -> None:
    app = create_app(engine, settings=settings, bench_routes=bench_routes or settings.bench_routes)
    config = uvicorn.Config(
        app,
        host=settings.bind,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        ws="websockets-sansio",
        http=_http_protocol(),
    )
    server = _Server(config)
    # uvicorn's public serve() installs its own signal handlers and re-raises the
    # signal afterwards; _serve() is the same without that.
    task = asyncio.create_task(server._serve())
    waiter = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if not server.started:
        ready.cancel()
        waiter.cancel()
        await task  # uvicorn exits (SystemExit) when it cannot bind
        raise OSError(f"could not listen on {settings.bind}:{settings.port}")
    try:
        if engine.cluster is not None:  # other hosts forward this host's actors here
            engine.cluster.serving(_url(server, settings), settings.token)
        if on_ready is not None:
            on_ready(_url(server, settings))
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        server.should_exit = True
        await _end_streams(engine)
        await task


class _WriteCombining:
    """A transport whose writes in one event-loop tick leave in one ``send``.

    uvicorn writes a response's head and its body separately: two syscalls, and two
    wake-ups of the client, per response. Joined at the end of the tick (at most one
    loop iteration later, order kept), a small response is one. Everything else is
    the real transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _http_protocol() -> Any:
    """uvicorn's httptools protocol on a write-combining transport (h11 without
    httptools, as uvicorn would choose)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class Protocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_WriteCombining(transport))  # type: ignore[arg-type]

    return Protocol


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


async def _end_streams(engine: Engine) -> None:
    """Close every broadcast subscription so open SSE/WebSocket streams finish."""
    await engine.close_subscriptions()


def _url(server: uvicorn.Server, settings: ServerSettings) -> str:
    port = settings.port
    for s in server.servers:
        for sock in s.sockets:
            port = sock.getsockname()[1]
            break
    host = settings.bind
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed (a default dependency,
    absent on Windows): its loop and transports cost a fraction of asyncio's per
    request, which the HTTP server's throughput is bound by (docs/http.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_server(
    target: Registry | EngineFactory,
    *,
    bind: str | None = None,
    port: int | None = None,
    token: str | None = None,
    db: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Blocking: serve ``target`` (a registry, or a function making an Engine) over HTTP."""
    updates: dict[str, Any] = {}
    if bind is not None:
        updates["bind"] = bind
    if port is not None:
        updates["port"] = port
    if token is not None:
        updates["token"] = token or None
    settings = ServerSettings().model_copy(update=updates)
    check_bind(settings.bind, settings.token)
    if isinstance(target, Registry):
        config = EngineConfig()
        if db:
            config = config.model_copy(update={"db": db})
        engine = Engine(target, config=config)
    else:
        engine = target()
    started = time.monotonic()

    def ready(url: str) -> None:
        log.info("listening on %s (%.2fs)", url, time.monotonic() - started)
        if on_ready is not None:
            on_ready(url)

    run_loop(serve(engine, settings, on_ready=ready))
