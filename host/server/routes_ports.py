"""Preview URLs and file watches of a vm, over HTTP.

- ``/vms/{key}/ports/{port}/{path}`` (every method, and WebSocket upgrades): a
  streaming reverse proxy to ``127.0.0.1:<port>`` inside the sandbox, over the
  supervisor link (host/sandbox/ports.py; the sandbox has no network). One sandbox
  connection per request (``Connection: close`` upstream); the request body streams
  in and the response streams out through the channel window (bounded); the
  connect and every idle wait have deadlines (``AGENTVM_PREVIEW_*``). Hop-by-hop
  headers are dropped, ``Host`` is ``localhost:<port>``, ``X-Forwarded-*`` say where
  the request came from, the agentvm token never reaches the sandbox, and a
  ``Location`` (and a cookie's ``Path``) is rewritten under the prefix.
- Every proxied response is hostile content: it gets ``Content-Security-Policy:
  sandbox ...`` so the browser runs it in an opaque origin (preview.py).
- ``GET /vms/{key}/ports``: the listening ports, with their preview paths.
- ``GET /vms/{key}/watch?path=``: server-sent ``file_changed`` events of a watch
  started for this request and stopped when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlsplit

import h11
from fastapi import APIRouter, Path, Query, Request, WebSocket
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response as WsResponse
from websockets.uri import parse_uri

from host.sandbox import Sandbox
from host.sandbox.ports import PortStream, PortUnavailable, open_port
from host.vm.manager import manager_of
from orchestrator import Engine, Subscription
from orchestrator.errors import AgentVMError, InvalidRequest

from .common import ERRORS, engine_of, json_response, resolve, settings_of
from .errors import error_body
from .preview import PREVIEW_CSP, capability, preview_secret
from .settings import ServerSettings

log = logging.getLogger("agentvm.server")

router = APIRouter(tags=["vms"], responses=ERRORS)

VM = "vm"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Largest response head (status line + headers) accepted from the sandbox.
MAX_HEAD = 64 * 1024
# Largest WebSocket message relayed either way (a bigger one closes with 1009).
MAX_WS_MESSAGE = 4 * 1024 * 1024
# Answer headers a preview may not send: they act on the whole origin (the console's
# storage, service workers), not just the preview.
DROPPED_RESPONSE = frozenset({"clear-site-data", "service-worker-allowed"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded to the sandbox: our credentials and what we set ourselves.
DROPPED_REQUEST = frozenset({"authorization", "host", "content-length", "expect"}) | {
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "forwarded",
}
_COOKIE_ATTR = re.compile(r";\s*(path|domain)=[^;]*", re.IGNORECASE)


class InvalidPreviewLink(AgentVMError):
    """A preview link whose capability does not match its vm."""

    group = "auth"
    code = "invalid_preview_link"
    http_status = 403


# 1-65535, then optionally ".<capability>" (a preview link, preview.py).
PORT_PATTERN = (
    r"^(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
    r"(?:\.[A-Za-z0-9_-]{16,64})?$"
)
PortParam = Annotated[
    str,
    Path(
        pattern=PORT_PATTERN,
        description="TCP port inside the sandbox, or `<port>.<capability>` of a preview link",
    ),
]


class TooManyPreviews(AgentVMError):
    """A vm has as many preview connections open as the server allows."""

    group = "sandbox"
    code = "too_many_previews"
    http_status = 429


class NoSandbox(AgentVMError):
    """The server's vm actor runs without a sandbox manager (a test registry)."""

    group = "sandbox"
    code = "no_sandbox"
    http_status = 404


def _port(raw: str) -> int:
    number = raw.partition(".")[0]
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise InvalidRequest(
            f"port must be an integer from 1 to 65535, got {raw[:20]!r}", field="port"
        )
    return int(number)


def _check_link(app: Any, key: str, raw_port: str) -> bool:
    """True for a capability link (``8000.<cap>``), after checking it; False for a
    plain port (the bearer token authorised it)."""
    _, dot, cap = raw_port.partition(".")
    if not dot:
        return False
    if not hmac.compare_digest(capability(preview_secret(app), key), cap):
        raise InvalidPreviewLink("this preview link is not valid for this vm (or this server)")
    return True


def _prefix(key: str, raw_port: str) -> str:
    return f"/vms/{key}/ports/{raw_port}"


def preview_link(app: Any, key: str, port: int) -> str:
    """The path a browser can open: ``/vms/{key}/ports/{port}.{cap}/`` (preview.py)."""
    return f"/vms/{key}/ports/{port}.{capability(preview_secret(app), key)}/"


def _target(path: str, query: bytes) -> str:
    """The request target for the sandbox: the raw path and query as received, with
    any byte that is not printable ASCII percent-encoded (h11 sends ASCII only)."""
    raw = ("/" + path).encode("latin-1", "replace") + (b"?" + query if query else b"")
    return "".join(chr(b) if 0x20 < b < 0x7F else f"%{b:02X}" for b in raw)


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[str]:
    """Header names listed in ``Connection`` (also hop-by-hop)."""
    names: set[str] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            names.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t)
    return names


def _request_headers(scope: Scope, port: int, prefix: str) -> list[tuple[str, str]]:
    raw: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
    skip = HOP_BY_HOP | DROPPED_REQUEST | _connection_tokens(raw)
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in raw
        if k.lower().decode("latin-1") not in skip
    ]
    host = next((v.decode("latin-1") for k, v in raw if k == b"host"), "")
    client = scope.get("client")
    scheme = str(scope.get("scheme") or "http")
    headers += [
        ("Host", f"localhost:{port}"),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Proto", {"ws": "http", "wss": "https"}.get(scheme, scheme)),
        ("X-Forwarded-Prefix", prefix),
    ]
    if client:
        headers.append(("X-Forwarded-For", str(client[0])))
    return headers


def _rewrite_location(value: str, port: int, prefix: str) -> str:
    """A redirect inside the sandbox's server stays under the preview prefix."""
    if value.startswith("/") and not value.startswith("//"):
        return prefix + value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.scheme in ("http", "https") and parts.hostname in ("localhost", "127.0.0.1", "::1"):
        if (parts.port or 80) == port:
            rest = parts.path or "/"
            return prefix + rest + (f"?{parts.query}" if parts.query else "")
    return value


def _response_headers(
    raw: list[tuple[bytes, bytes]], port: int, prefix: str, *, has_body: bool, link: bool
) -> list[tuple[bytes, bytes]]:
    skip = HOP_BY_HOP | DROPPED_RESPONSE | _connection_tokens(raw)
    out: list[tuple[bytes, bytes]] = []
    for key, value in raw:
        name = key.lower().decode("latin-1")
        if name in skip:
            continue
        text = value.decode("latin-1")
        if name == "location":
            text = _rewrite_location(text, port, prefix)
        elif name == "set-cookie":
            # A cookie applies to this preview only, never to the API or another vm's.
            text = _COOKIE_ATTR.sub("", text) + f"; Path={prefix}/"
        elif name == "content-length" and not has_body:
            continue
        if name == "referrer-policy" and link:
            continue
        out.append((name.encode("latin-1"), text.encode("latin-1")))
    if link:  # the capability in the URL must not leak to other sites
        out.append((b"referrer-policy", b"no-referrer"))
    out.append((b"content-security-policy", PREVIEW_CSP.encode()))
    out.append((b"x-content-type-options", b"nosniff"))
    return out


async def _sandbox(request_app: Any, key: str) -> tuple[contextlib.AsyncExitStack, Sandbox]:
    """The vm's live sandbox, held (awake) until the returned stack is closed."""
    engine: Engine = request_app.state.engine
    _, _, actor_key = await resolve(engine, VM, key, create=False)
    manager = manager_of(engine)
    if manager is None:
        raise NoSandbox(f"vm {key!r} has no sandbox on this server (its vm actor has none)")
    # Each connection may hold a channel window (4 MiB) on the host: a bounded number.
    counts: dict[tuple[str, ...], int] | None = getattr(
        request_app.state, "preview_connections", None
    )
    if counts is None:
        counts = request_app.state.preview_connections = {}
    limit: int = request_app.state.settings.preview_max_connections
    if counts.get(actor_key, 0) >= limit:
        raise TooManyPreviews(
            f"vm {key!r} has {limit} preview connections open already "
            "(AGENTVM_PREVIEW_MAX_CONNECTIONS)",
            limit=limit,
        )
    counts[actor_key] = counts.get(actor_key, 0) + 1

    def release() -> None:
        left = counts.get(actor_key, 1) - 1
        if left > 0:
            counts[actor_key] = left
        else:
            counts.pop(actor_key, None)

    stack = contextlib.AsyncExitStack()
    stack.callback(release)
    try:
        sandbox = await stack.enter_async_context(manager.sandbox_for(engine, list(actor_key)))
    except BaseException:
        await stack.aclose()
        raise
    return stack, sandbox


async def _open(settings: ServerSettings, sandbox: Sandbox, port: int) -> PortStream:
    return await open_port(
        sandbox,
        port,
        connect_timeout=settings.preview_connect_timeout_s,
        idle_timeout=settings.preview_idle_timeout_s,
    )


class _Upstream:
    """HTTP/1.1 client side of one proxied request, over a :class:`PortStream`."""

    def __init__(self, stream: PortStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    async def send(self, event: Any) -> None:
        try:
            data = self.conn.send(event)
        except (h11.LocalProtocolError, UnicodeError) as exc:  # a header h11 will not send
            raise InvalidRequest(f"the request cannot be forwarded as HTTP/1.1: {exc}") from None
        if data:
            await self.stream.write(data)

    async def next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise PortUnavailable(
                    f"port {self.stream.port} did not answer with valid HTTP: {exc}",
                    port=self.stream.port,
                ) from None
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.read())


@router.get(
    "/vms/{key}/ports/{port}",
    summary="Redirect to a preview's root (with a trailing slash)",
    include_in_schema=False,
)
async def preview_root(request: Request, key: str, port: PortParam) -> Response:
    _port(port)
    _check_link(request.app, key, port)
    query = request.scope.get("query_string", b"").decode("latin-1")
    return RedirectResponse(
        _prefix(key, port) + "/" + (f"?{query}" if query else ""), status_code=308
    )


@router.api_route(
    "/vms/{key}/ports/{port}/{path:path}",
    methods=METHODS,
    summary="Preview: proxy HTTP to a port inside the sandbox",
    response_class=Response,
)
async def preview(request: Request, key: str, port: PortParam, path: str) -> Response:
    """Streams the request to ``127.0.0.1:<port>`` inside the sandbox and its answer
    back (502 ``port_unavailable`` when nothing listens, 504 ``port_timeout``)."""
    number = _port(port)
    link = _check_link(request.app, key, port)
    prefix = _prefix(key, port)
    target = _target(path, request.scope.get("query_string", b""))
    settings = settings_of(request)
    stack, sandbox = await _sandbox(request.app, key)
    try:
        stream = await _open(settings, sandbox, number)
        stack.push_async_callback(stream.close)
        upstream = _Upstream(stream)
        headers = _request_headers(request.scope, number, prefix)
        length = request.headers.get("content-length")
        chunked = length is None and request.method not in ("GET", "HEAD", "OPTIONS", "DELETE")
        if length is not None:
            headers.append(("Content-Length", length))
        elif chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        headers.append(("Connection", "close"))
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await upstream.send(h11.Request(method=request.method, target=target, headers=raw_headers))
        async for chunk in request.stream():
            if chunk:
                await upstream.send(h11.Data(data=chunk))
        await upstream.send(h11.EndOfMessage())
        while True:
            event = await upstream.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue: the final answer follows
            if isinstance(event, h11.Response):
                break
            raise PortUnavailable(f"port {number} closed without an answer", port=number)
    except BaseException:
        await stack.aclose()
        raise
    has_body = request.method != "HEAD" and event.status_code not in (204, 304)
    response_headers = _response_headers(
        list(event.headers), number, prefix, has_body=has_body, link=link
    )

    async def body() -> AsyncIterator[bytes]:
        try:
            while has_body:
                item = await upstream.next_event()
                if isinstance(item, h11.Data):
                    yield bytes(item.data)
                elif isinstance(item, h11.EndOfMessage | h11.ConnectionClosed):
                    return
        except AgentVMError as exc:
            # Headers are out: the only way left to say so is to cut the body short.
            log.info("preview %s%s ended early: %s", prefix, target, exc)
        finally:
            await stack.aclose()

    response = StreamingResponse(body(), status_code=event.status_code)
    response.raw_headers = response_headers
    return response


@router.websocket("/vms/{key}/ports/{port}/{path:path}")
async def preview_websocket(websocket: WebSocket, key: str, port: str, path: str) -> None:
    """A WebSocket to the port inside the sandbox: the handshake is made upstream
    first (its subprotocol answered to the client), then messages are relayed."""
    scope = websocket.scope
    try:
        number = _port(port)
        _check_link(websocket.app, key, port)
        prefix = _prefix(key, port)
        target = _target(path, scope.get("query_string", b""))
        settings: ServerSettings = websocket.app.state.settings
        stack, sandbox = await _sandbox(websocket.app, key)
    except AgentVMError as exc:
        await _deny(websocket, exc.http_status, error_body(exc.group, exc.code, exc.message))
        return
    async with stack:
        try:
            stream = await _open(settings, sandbox, number)
        except AgentVMError as exc:
            await _deny(websocket, exc.http_status, error_body(exc.group, exc.code, exc.message))
            return
        stack.push_async_callback(stream.close)
        protocol = ClientProtocol(
            parse_uri(f"ws://localhost:{number}{target}"),
            # Never the console's token subprotocol (agentvm.bearer.<token>).
            subprotocols=[s for s in scope.get("subprotocols", []) if not s.startswith("agentvm")]
            or None,
            max_size=MAX_WS_MESSAGE,
        )
        handshake = protocol.connect()
        for name, value in _request_headers(scope, number, prefix):
            lower = name.lower()
            if lower.startswith("sec-websocket-") or lower in ("host", "origin"):
                continue
            handshake.headers[name] = value
        protocol.send_request(handshake)
        try:
            answer, early = await _handshake(protocol, stream)
        except AgentVMError as exc:
            await _deny(websocket, exc.http_status, error_body(exc.group, exc.code, exc.message))
            return
        if answer.status_code != 101 or protocol.handshake_exc is not None:
            await _deny(
                websocket,
                502,
                error_body(
                    "sandbox",
                    "websocket_refused",
                    f"port {number} refused the WebSocket (HTTP {answer.status_code})",
                    status=answer.status_code,
                ),
            )
            return
        await websocket.accept(subprotocol=answer.headers.get("Sec-WebSocket-Protocol"))
        stream.read_idle = None  # a quiet WebSocket is normal; the client can leave
        await _relay(websocket, protocol, stream, early)


async def _deny(websocket: WebSocket, status: int, body: dict[str, Any]) -> None:
    """Refuse the handshake with a JSON error (or a close where the server cannot)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(json_response(body, status))
    else:
        await websocket.close(code=1011, reason=str(body["error"]["code"])[:100])


async def _handshake(protocol: ClientProtocol, stream: PortStream) -> tuple[WsResponse, list[Any]]:
    """The upstream's answer to the handshake, and any frames that came with it."""
    for chunk in protocol.data_to_send():
        await stream.write(chunk)
    while True:
        data = await stream.read()
        if not data:
            raise PortUnavailable(
                f"port {stream.port} closed during the WebSocket handshake", port=stream.port
            )
        protocol.receive_data(data)
        events = protocol.events_received()
        for index, event in enumerate(events):
            if isinstance(event, WsResponse):
                return event, events[index + 1 :]


async def _relay(
    websocket: WebSocket, protocol: ClientProtocol, stream: PortStream, early: list[Any]
) -> None:
    """Messages both ways until either side closes; every message bounded."""

    async def flush() -> None:
        for chunk in protocol.data_to_send():
            if chunk:
                await stream.write(chunk)
            else:
                await stream.write_eof()

    async def client_to_port() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                protocol.send_close(1000)
                await flush()
                return
            if message.get("bytes") is not None:
                protocol.send_binary(message["bytes"])
            elif message.get("text") is not None:
                protocol.send_text(message["text"].encode())
            await flush()

    parts: list[bytes] = []
    state = {"size": 0, "binary": False}

    async def deliver(frames: list[Any]) -> bool:
        """Relay whole messages; False once the message was too big (closed)."""
        for frame in frames:
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                parts.clear()
                state.update(size=0, binary=frame.opcode == Opcode.BINARY)
            if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                continue  # ping/pong/close: the protocol answers them
            state["size"] += len(frame.data)
            if state["size"] > MAX_WS_MESSAGE:
                await websocket.close(code=1009)
                return False
            parts.append(bytes(frame.data))
            if frame.fin:
                payload = b"".join(parts)
                parts.clear()
                state["size"] = 0
                if state["binary"]:
                    await websocket.send_bytes(payload)
                else:
                    await websocket.send_text(payload.decode("utf-8", errors="replace"))
        return True

    async def port_to_client() -> None:
        if not await deliver(early):
            return
        while True:
            data = await stream.read()
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            if not await deliver(protocol.events_received()):
                return
            await flush()  # pongs and the close handshake
            if not data or protocol.close_code is not None:
                code = protocol.close_code or 1000
                with contextlib.suppress(Exception):
                    await websocket.close(code=code if 1000 <= code < 5000 else 1011)
                return

    tasks = [asyncio.create_task(client_to_port()), asyncio.create_task(port_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, AgentVMError):
                log.info("preview websocket ended: %s", result)
                with contextlib.suppress(Exception):
                    await websocket.close(code=1011)


# --- ports and watches ------------------------------------------------------------------


@router.get("/vms/{key}/ports", summary="Listening ports of a sandbox, with preview paths")
async def ports(request: Request, key: str) -> Response:
    engine = engine_of(request)
    actor_id, _, _ = await resolve(engine, VM, key, create=False)
    listed = await engine.call(actor_id, "list_ports", [])
    for entry in listed:
        entry["preview"] = preview_link(request.app, key, int(entry["port"]))
    template = preview_link(request.app, key, 1).replace("/ports/1.", "/ports/{port}.", 1)
    return json_response({"ports": listed, "preview_template": template})


class WatchStream(Response):
    """``text/event-stream`` of one watch: ``file_changed`` events (and a final
    ``watch_ended``); the watch is stopped when the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, engine: Engine, actor_id: str, sub: Subscription, watch_id: str) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.engine, self.actor_id, self.sub, self.watch_id = engine, actor_id, sub, watch_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            pump = asyncio.create_task(self._pump(send))
            gone = asyncio.create_task(_until_disconnect(receive))
            try:
                await asyncio.wait([pump, gone], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, gone):
                    task.cancel()
                await asyncio.gather(pump, gone, return_exceptions=True)
        finally:
            await self.sub.close()
            with contextlib.suppress(Exception):
                await self.engine.call(self.actor_id, "unwatch", [self.watch_id])

    async def _pump(self, send: Send) -> None:
        async def chunk(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        await chunk(f": watching {self.watch_id}\n\n".encode())
        while True:
            try:
                ev = await self.sub.next(timeout=15.0)
            except TimeoutError:
                await chunk(b": ping\n\n")
                continue
            except (StopAsyncIteration, AgentVMError):
                await chunk(b"", more=False)
                return
            payload = ev.payload if isinstance(ev.payload, dict) else {}
            if payload.get("watch_id") != self.watch_id:
                continue
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
            await chunk(f"event: {ev.name}\ndata: {data}\n\n".encode())
            if ev.name == "watch_ended":
                await chunk(b"", more=False)
                return


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get(
    "/vms/{key}/watch",
    summary="Server-sent file changes under a path of a sandbox",
    status_code=200,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def watch(
    request: Request,
    key: str,
    path: str = Query("/home/user", description="directory (or file) to watch"),
    recursive: bool = Query(True, description="also the directories below it"),
) -> Response:
    for name in request.query_params:
        if name not in ("path", "recursive"):
            raise InvalidRequest(
                f"unknown query parameter {name!r} (this route takes: path, recursive)",
                field=f"query.{name}",
            )
    engine = engine_of(request)
    settings = settings_of(request)
    actor_id, _, _ = await resolve(engine, VM, key, create=False)
    sub = await engine.subscribe(
        actor_id,
        ["file_changed", "watch_ended"],
        max_bytes=settings.subscriber_max_bytes,
        max_events=settings.subscriber_max_events,
    )
    try:
        started = await engine.call(actor_id, "watch", [path, {"recursive": recursive}])
    except BaseException:
        await sub.close()
        raise
    return WatchStream(engine, actor_id, sub, str(started["watch_id"]))
