"""The host's LLM gateway: an Anthropic-compatible HTTP endpoint per sandbox.

Each sandbox gets a unix socket ``gateway.sock`` in its control directory (beside
``control.sock``, bind-mounted read-only at ``/run/agentvm``); the supervisor
splices ``127.0.0.1:<port>`` inside the sandbox to it. Only processes of that
sandbox's container may connect (``host/sandbox/peer.py``), at most
``max_connections`` at a time. Only allowlisted routes are forwarded
(``routes.py``), to the configured upstream with the host's API key injected; the
response (SSE included) is streamed back byte for byte, and token usage is
recorded per sandbox and per session (``x-agentvm-session``). See docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx

from host.sandbox.listener import SandboxSocketServer
from host.sandbox.peer import ContainerPeer, PeerRefused
from vm_images.supervisor import protocol as P

from .connection import HOP_BY_HOP, HttpConnection, PeerTimeout, anthropic_error, raw_error
from .limits import GatewayLimits, LogLimiter
from .models import Usage, UsageRecord, UsageReport
from .routes import Refusal

log = logging.getLogger("agentvm.gateway")

DEFAULT_UPSTREAM = "https://api.anthropic.com"
SESSION_HEADER = "x-agentvm-session"
PLACEHOLDER_KEY = P.GATEWAY_PLACEHOLDER_KEY

UsageCallback = Callable[[UsageRecord], Awaitable[None] | None]
__all__ = ["PLACEHOLDER_KEY", "SESSION_HEADER", "LLMGateway", "SandboxGateway", "anthropic_error"]


@dataclass
class _Ledger:
    total: Usage = field(default_factory=Usage)
    sessions: dict[str, Usage] = field(default_factory=dict)
    budget_tokens: int | None = None


class SandboxGateway(SandboxSocketServer):
    """The listener of one sandbox (from :meth:`LLMGateway.serve`): accepts only
    processes of its container, at most ``limits.max_connections`` at a time."""

    def __init__(
        self, gateway: LLMGateway, sandbox: str, socket_path: Path, peer: ContainerPeer
    ) -> None:
        super().__init__(socket_path)
        self.gateway = gateway
        self.sandbox = sandbox
        self.peer = peer

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        gw = self.gateway
        # Count first (synchronously, before any await), so a flood of connections
        # cannot get past the cap while peer checks are pending.
        if len(self._conns) >= gw.limits.max_connections:
            gw.logs.log(
                logging.WARNING,
                f"cap|{self.sandbox}",
                "gateway of %s: over %d connections, refusing",
                self.sandbox,
                gw.limits.max_connections,
            )
            writer.write(_OVER_CAP)
            writer.close()
            return
        self._conns.add(task)
        try:
            try:
                await self.peer.acheck(writer.get_extra_info("socket"))
            except (PeerRefused, OSError) as exc:
                gw.logs.log(
                    logging.WARNING,
                    f"peer|{self.sandbox}",
                    "gateway of %s: refused a connection: %s",
                    self.sandbox,
                    exc,
                )
                writer.write(_NOT_YOURS)
                return
            await HttpConnection(self, reader, writer).serve()
        except (ConnectionError, OSError, h11.ProtocolError, PeerTimeout) as exc:
            gw.logs.log(
                logging.DEBUG, f"end|{type(exc).__name__}", "gateway connection ended: %r", exc
            )
        except asyncio.CancelledError:
            # close(): end quietly (asyncio logs a cancelled connection callback task).
            pass
        except Exception as exc:
            # Never let a sandbox's request crash into asyncio's unhandled-exception log
            # (one traceback per connection is a log flood): rate-limited, per kind.
            gw.logs.log(
                logging.ERROR,
                f"fail|{type(exc).__name__}",
                "gateway connection of %s failed",
                self.sandbox,
                exc_info=exc,
            )
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
        limits: GatewayLimits | None = None,
    ) -> None:
        self.api_key = api_key or None
        self.upstream = (upstream or DEFAULT_UPSTREAM).rstrip("/")
        self.upstream_url = _parse_upstream(self.upstream)
        self.on_usage = on_usage
        self.limits = limits or GatewayLimits()
        self.logs = LogLimiter(log)
        self.client = httpx.AsyncClient(
            timeout=timeout or httpx.Timeout(connect=30.0, read=600.0, write=60.0, pool=60.0),
            follow_redirects=False,
        )
        self._ledgers: dict[str, _Ledger] = {}
        self._served: dict[str, SandboxGateway] = {}

    @classmethod
    def from_env(
        cls, *, on_usage: UsageCallback | None = None, limits: GatewayLimits | None = None
    ) -> LLMGateway:
        """Upstream and key from the host's ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY``."""
        return cls(
            api_key=os.environ.get("ANTHROPIC_API_KEY"),
            upstream=os.environ.get("ANTHROPIC_BASE_URL"),
            on_usage=on_usage,
            limits=limits,
        )

    async def serve(
        self,
        sandbox: str,
        control_dir: str | os.PathLike[str],
        *,
        container: str | ContainerPeer,
        budget_tokens: int | None = None,
        used: Usage | None = None,
    ) -> SandboxGateway:
        """Listen on ``<control_dir>/gateway.sock`` for ``sandbox`` (an id of your
        choosing, e.g. the vm key), accepting only processes of ``container`` (its
        full Docker id, ``Sandbox.id``). ``used`` restores a ledger after a host restart."""
        peer = container if isinstance(container, ContainerPeer) else ContainerPeer(container)
        old = self._served.pop(sandbox, None)
        if old is not None:
            await old.close()
        ledger = self._ledgers.setdefault(sandbox, _Ledger())
        if budget_tokens is not None:
            ledger.budget_tokens = budget_tokens
        if used is not None:
            ledger.total = used.model_copy()
        listener = SandboxGateway(self, sandbox, Path(control_dir) / P.GATEWAY_SOCKET_NAME, peer)
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
        await self.client.aclose()

    # -- request handling -------------------------------------------------------

    def refused(self, sandbox: str, r: Refusal, target: bytes) -> None:
        """A request the route allowlist refused (rate-limited log)."""
        self.logs.log(
            logging.WARNING,
            f"route|{sandbox}",
            "gateway of %s: refused %d for target %r",
            sandbox,
            r.status,
            target[:120],
        )

    def over_budget(self, sandbox: str) -> str | None:
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

    def upstream_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]] | None:
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

    async def record(self, record: UsageRecord) -> None:
        ledger = self._ledgers.setdefault(record.sandbox, _Ledger())
        ledger.total.add(record.usage)
        if record.session_id:
            ledger.sessions.setdefault(record.session_id, Usage()).add(record.usage)
        if self.on_usage is not None:
            try:
                outcome = self.on_usage(record)
                if outcome is not None:
                    await outcome
            except Exception as exc:
                # Once per request a sandbox makes: rate-limited like every gateway log.
                self.logs.log(logging.ERROR, "on_usage", "on_usage callback failed", exc_info=exc)


_OVER_CAP = raw_error(
    503,
    "Service Unavailable",
    "overloaded_error",
    "agentvm LLM gateway: too many open connections from this sandbox",
)
_NOT_YOURS = raw_error(
    403,
    "Forbidden",
    "permission_error",
    "agentvm LLM gateway: this socket serves only the processes of its sandbox",
)


def _parse_upstream(upstream: str) -> httpx.URL:
    url = httpx.URL(upstream)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"LLM gateway upstream must be an http(s) URL, got {upstream!r}")
    if url.query or url.fragment or url.userinfo:
        raise ValueError(
            f"LLM gateway upstream must have no query, fragment or userinfo: {upstream!r}"
        )
    return url
