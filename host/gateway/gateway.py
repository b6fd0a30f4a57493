"""The host's LLM gateway: an Anthropic-compatible HTTP endpoint per sandbox.

Each sandbox gets a unix socket ``gateway.sock`` in its control directory (beside
``control.sock``, bind-mounted read-only at ``/run/agentvm``); the supervisor
splices ``127.0.0.1:<port>`` inside the sandbox to it. Every request is forwarded
to the upstream with the host's API key injected, the response (SSE included) is
streamed back byte for byte, and token usage is recorded per sandbox and per
session (``x-agentvm-session``). See docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx

from vm_images.supervisor import protocol as P

from .models import Usage, UsageRecord, UsageReport
from .usage import MAX_JSON, SSEUsage, usage_from_json

log = logging.getLogger("agentvm.gateway")

DEFAULT_UPSTREAM = "https://api.anthropic.com"
SESSION_HEADER = "x-agentvm-session"
PLACEHOLDER_KEY = P.GATEWAY_PLACEHOLDER_KEY
MAX_REQUEST = 64 * 1024 * 1024
READ_CHUNK = 64 * 1024
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}

UsageCallback = Callable[[UsageRecord], Awaitable[None] | None]


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@dataclass
class _Ledger:
    total: Usage = field(default_factory=Usage)
    sessions: dict[str, Usage] = field(default_factory=dict)
    budget_tokens: int | None = None


class SandboxGateway:
    """The listener of one sandbox (from :meth:`LLMGateway.serve`)."""

    def __init__(self, gateway: LLMGateway, sandbox: str, socket_path: Path) -> None:
        self.gateway = gateway
        self.sandbox = sandbox
        self.socket_path = socket_path
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o666)  # the container user connects

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await _HttpConnection(self, reader, writer).serve()
        except (ConnectionError, OSError, h11.ProtocolError) as exc:
            log.debug("gateway connection ended: %s", exc)
        except asyncio.CancelledError:
            # close(): end quietly (asyncio logs a cancelled connection callback task).
            pass
        finally:
            self._conns.discard(task)
            writer.close()


class LLMGateway:
    """Host-wide: upstream, key, one HTTP client, and usage ledgers per sandbox.

    ``serve(sandbox, control_dir)`` starts (or restarts) the listener of a sandbox;
    ``usage(sandbox)`` reads its ledger; ``set_budget`` caps it; ``on_usage`` is
    called after every model request (e.g. to store or broadcast it)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        upstream: str | None = None,
        on_usage: UsageCallback | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        self.api_key = api_key or None
        self.upstream = (upstream or DEFAULT_UPSTREAM).rstrip("/")
        self.on_usage = on_usage
        self._client = httpx.AsyncClient(
            timeout=timeout or httpx.Timeout(connect=30.0, read=600.0, write=60.0, pool=60.0),
            follow_redirects=False,
        )
        self._ledgers: dict[str, _Ledger] = {}
        self._served: dict[str, SandboxGateway] = {}

    @classmethod
    def from_env(cls, *, on_usage: UsageCallback | None = None) -> LLMGateway:
        """Upstream and key from the host's ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``."""
        return cls(
            api_key=os.environ.get("ANTHROPIC_API_KEY"),
            upstream=os.environ.get("ANTHROPIC_BASE_URL"),
            on_usage=on_usage,
        )

    async def serve(
        self,
        sandbox: str,
        control_dir: str | os.PathLike[str],
        *,
        budget_tokens: int | None = None,
        used: Usage | None = None,
    ) -> SandboxGateway:
        """Listen on ``<control_dir>/gateway.sock`` for ``sandbox`` (an id of your
        choosing, e.g. the vm key). ``used`` restores a ledger after a host restart."""
        old = self._served.pop(sandbox, None)
        if old is not None:
            await old.close()
        ledger = self._ledgers.setdefault(sandbox, _Ledger())
        if budget_tokens is not None:
            ledger.budget_tokens = budget_tokens
        if used is not None:
            ledger.total = used.model_copy()
        listener = SandboxGateway(self, sandbox, Path(control_dir) / P.GATEWAY_SOCKET_NAME)
        await listener.start()
        self._served[sandbox] = listener
        return listener

    async def stop(self, sandbox: str, *, forget: bool = False) -> None:
        listener = self._served.pop(sandbox, None)
        if listener is not None:
            await listener.close()
        if forget:
            self._ledgers.pop(sandbox, None)

    def set_budget(self, sandbox: str, budget_tokens: int | None) -> None:
        self._ledgers.setdefault(sandbox, _Ledger()).budget_tokens = budget_tokens

    def usage(self, sandbox: str) -> UsageReport:
        ledger = self._ledgers.get(sandbox) or _Ledger()
        return UsageReport(
            sandbox=sandbox,
            total=ledger.total.model_copy(),
            sessions={k: v.model_copy() for k, v in ledger.sessions.items()},
            budget_tokens=ledger.budget_tokens,
        )

    async def close(self) -> None:
        for sandbox in list(self._served):
            await self.stop(sandbox)
        await self._client.aclose()

    # -- request handling -------------------------------------------------------

    def _over_budget(self, sandbox: str) -> str | None:
        ledger = self._ledgers.get(sandbox)
        if ledger is None or ledger.budget_tokens is None:
            return None
        used = ledger.total.total_tokens
        if used < ledger.budget_tokens:
            return None
        return (
            f"agentvm token budget exhausted for sandbox {sandbox!r}: "
            f"used {used} of budget_tokens={ledger.budget_tokens}"
        )

    def _upstream_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]] | None:
        """Forwarded headers with the key decided: the caller's own key when it sent
        one, else the host's. ``None`` when neither exists."""
        out: list[tuple[str, str]] = []
        caller_key = False
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in HOP_BY_HOP or name == SESSION_HEADER or name == "accept-encoding":
                continue
            if name == "x-api-key":
                if not value or value == PLACEHOLDER_KEY:
                    continue
                caller_key = True
            if name == "authorization":
                token = value.removeprefix("Bearer ").strip()
                if not token or token == PLACEHOLDER_KEY:
                    continue
                caller_key = True
            out.append((name, value))
        if not caller_key:
            if self.api_key is None:
                return None
            out.append(("x-api-key", self.api_key))
        # Identity encoding, so usage can be read from the bytes we pass through.
        out.append(("accept-encoding", "identity"))
        return out

    async def _record(self, record: UsageRecord) -> None:
        ledger = self._ledgers.setdefault(record.sandbox, _Ledger())
        ledger.total.add(record.usage)
        if record.session_id:
            ledger.sessions.setdefault(record.session_id, Usage()).add(record.usage)
        if self.on_usage is not None:
            try:
                outcome = self.on_usage(record)
                if outcome is not None:
                    await outcome
            except Exception:
                log.exception("on_usage callback failed")


class _HttpConnection:
    """HTTP/1.1 (keep-alive) on one accepted socket, via h11."""

    def __init__(
        self, owner: SandboxGateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.owner = owner
        self.gateway = owner.gateway
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(READ_CHUNK)
                self.conn.receive_data(data)
                continue
            return event

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def serve(self) -> None:
        while True:
            event = await self._next()
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            body = bytearray()
            too_big = False
            while True:
                part = await self._next()
                if isinstance(part, h11.Data):
                    if len(body) + len(part.data) > MAX_REQUEST:
                        too_big = True
                    else:
                        body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            if too_big:
                await self._reply(413, "request_too_large", "request body over 64 MiB")
            else:
                await self._handle(event, bytes(body))
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _reply(self, status: int, kind: str, message: str, **extra: str) -> None:
        body = anthropic_error(kind, message)
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *extra.items(),
        ]
        await self._send(h11.Response(status_code=status, headers=headers))
        await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _handle(self, request: h11.Request, body: bytes) -> None:
        gw = self.gateway
        sandbox = self.owner.sandbox
        target = request.target.decode("latin-1")
        session_id: str | None = None
        for name, value in request.headers:
            if name.lower() == SESSION_HEADER.encode():
                session_id = value.decode("latin-1") or None
        refusal = gw._over_budget(sandbox)
        if refusal is not None:
            # 429 like a quota error, but never worth retrying: the SDKs honour this.
            await self._reply(429, "rate_limit_error", refusal, **{"x-should-retry": "false"})
            return
        headers = gw._upstream_headers(list(request.headers))
        if headers is None:
            await self._reply(
                401,
                "authentication_error",
                "agentvm LLM gateway: the host has no ANTHROPIC_API_KEY and the request "
                "carried no key of its own",
            )
            return
        model: str | None = None
        if body[:1] == b"{":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                parsed = json.loads(body)
                if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
                    model = parsed["model"]
        upstream = httpx.Request(
            request.method.decode("ascii"), gw.upstream + target, headers=headers, content=body
        )
        try:
            response = await gw._client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            await self._reply(
                502, "api_error", f"agentvm LLM gateway: upstream {gw.upstream} failed: {exc}"
            )
            return
        try:
            await self._relay(response, sandbox, session_id, model, target)
        finally:
            await response.aclose()

    async def _relay(
        self,
        response: httpx.Response,
        sandbox: str,
        session_id: str | None,
        model: str | None,
        target: str,
    ) -> None:
        out_headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in HOP_BY_HOP
        ]
        await self._send(h11.Response(status_code=response.status_code, headers=out_headers))
        ctype = response.headers.get("content-type", "")
        sse = SSEUsage() if ctype.startswith("text/event-stream") else None
        collected = bytearray() if sse is None and "json" in ctype else None
        try:
            async for chunk in response.aiter_raw():
                if sse is not None:
                    sse.feed(chunk)
                elif collected is not None and len(collected) < MAX_JSON:
                    collected += chunk
                await self._send(h11.Data(data=chunk))
            await self._send(h11.EndOfMessage())
        finally:
            # Record even a stream cut short: the tokens were spent.
            usage = sse.usage if sse is not None else None
            if collected is not None and response.status_code < 400:
                usage = usage_from_json(bytes(collected))
            if usage is not None:
                usage.requests = 1
                await self.gateway._record(
                    UsageRecord(
                        sandbox=sandbox,
                        session_id=session_id,
                        model=model,
                        path=target,
                        status=response.status_code,
                        stream=sse is not None,
                        usage=usage,
                    )
                )
