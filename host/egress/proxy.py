"""The host's egress proxy: an HTTP(S) CONNECT proxy per sandbox with a host allowlist.

Each allowlist vm gets a unix socket ``egress.sock`` in its control directory
(bind-mounted read-only at ``/run/agentvm``); the supervisor splices
``127.0.0.1:3128`` inside the sandbox to it, and the container itself keeps no
network interface. A connection carries one ``CONNECT host:port`` (a tunnel, for
HTTPS) or one absolute-form plain-HTTP request (``GET http://host/...``), or asks
for a git credential (``POST /_agentvm/git-credential``). The proxy resolves names
itself and connects to the resolved address, so no name can lead to the host's
loopback or private networks unless an operator's resolver override maps it.
See docs/egress.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from host.sandbox.listener import SandboxSocketServer
from host.sandbox.peer import ContainerPeer, PeerRefused
from orchestrator.metrics import REGISTRY
from vm_images.supervisor.egress import CREDENTIAL_PATH, EGRESS_SOCKET_NAME

from .policy import (
    Allowlist,
    Credential,
    Denied,
    Target,
    is_public,
    normalise_host,
    parse_credential_request,
)

log = logging.getLogger("agentvm.egress")

# Request line and headers of one proxy request; more is a 431.
MAX_HEAD = 16 * 1024
# A git credential request body.
MAX_CREDENTIAL_BODY = 16 * 1024
BUF = 64 * 1024
# Headers a proxy must not forward (the request is rewritten to origin form).
_HOP = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive", b"host"}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

CONNECTIONS = REGISTRY.counter(
    "agentvm_egress_connections_total",
    "Egress proxy connections from sandboxes, by result (allowed, denied).",
)
BYTES = REGISTRY.counter(
    "agentvm_egress_bytes_total",
    "Bytes through the egress proxy (sent: sandbox to the internet; received: back).",
)
CREDENTIALS = REGISTRY.counter(
    "agentvm_egress_git_credentials_total",
    "git credential requests from sandboxes, by result (answered, none, denied).",
)


@dataclass
class EgressLimits:
    """Bounds on what one sandbox can make the proxy hold."""

    max_connections: int = 64
    header_timeout: float = 10.0
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    ports: frozenset[int] = frozenset({80, 443})


@dataclass
class _Log:
    host: str = "-"
    port: int = 0
    result: str = "denied"
    reason: str = ""
    sent: int = 0
    received: int = 0
    # Credential requests have their own counter, not a connection's.
    counted: bool = True


class SandboxEgress(SandboxSocketServer):
    """The listener of one sandbox (from :meth:`EgressProxy.serve`)."""

    def __init__(
        self,
        proxy: EgressProxy,
        sandbox: str,
        socket_path: Path,
        allow: Allowlist,
        peer: ContainerPeer | None,
    ) -> None:
        super().__init__(socket_path, limit=MAX_HEAD)
        self.proxy = proxy
        self.sandbox = sandbox
        self.allow = allow
        # Only the sandbox's own processes may use it (as for the LLM gateway): the
        # socket's mode lets the container's uid connect, so any local uid could too.
        self.peer = peer

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        entry = _Log()
        try:
            if len(self._conns) >= self.proxy.limits.max_connections:
                entry.reason = "too many connections"
                await _reply(writer, 503, "too many egress connections from this sandbox")
                return
            self._conns.add(task)
            if self.peer is not None:
                try:
                    await self.peer.acheck(writer.get_extra_info("socket"))
                except PeerRefused as exc:
                    entry.reason = f"peer refused: {exc}"
                    await _reply(writer, 403, "not a process of this sandbox")
                    return
            await _Connection(self, reader, writer, entry).serve()
        except (ConnectionError, OSError) as exc:
            entry.reason = entry.reason or f"connection error: {exc}"
        except asyncio.CancelledError:
            entry.reason = entry.reason or "proxy closed"  # close(): end quietly
        finally:
            self._conns.discard(task)
            writer.close()
            self.proxy._record(self.sandbox, entry)


class _Connection:
    def __init__(
        self,
        listener: SandboxEgress,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: _Log,
    ) -> None:
        self.listener = listener
        self.proxy = listener.proxy
        self.limits = listener.proxy.limits
        self.reader = reader
        self.writer = writer
        self.entry = entry

    async def serve(self) -> None:
        try:
            head = await asyncio.wait_for(
                self.reader.readuntil(b"\r\n\r\n"), self.limits.header_timeout
            )
        except TimeoutError:
            return await self._deny(Denied("no request head in time", 408))
        except asyncio.LimitOverrunError:
            return await self._deny(Denied("request head too large", 431))
        except asyncio.IncompleteReadError:
            self.entry.reason = "closed before a request"
            return
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return await self._deny(Denied("not an HTTP/1.x request", 400))
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        headers = [_header(line) for line in lines[1:]]
        try:
            if method == "CONNECT":
                await self._connect(target)
            elif target.lower().startswith("http://"):
                await self._forward(method, target, parts[2], headers)
            elif target == CREDENTIAL_PATH:
                await self._credential(method, headers)
            else:
                raise Denied("expected CONNECT host:port or an absolute http:// URL", 400)
        except Denied as exc:
            await self._deny(exc)

    async def _deny(self, exc: Denied) -> None:
        self.entry.result = "denied"
        self.entry.reason = exc.reason
        await _reply(self.writer, exc.status, f"agentvm egress: {exc.reason}")

    def _check(self, host: str, port: int) -> str:
        """The normalised name if this sandbox may reach ``host:port``, else Denied."""
        name = normalise_host(host)
        self.entry.host, self.entry.port = name, port
        if port not in self.limits.ports:
            raise Denied(f"port {port} is not an allowed egress port")
        if not self.listener.allow.allows(name):
            raise Denied(f"{name} is not in this vm's network allowlist")
        return name

    async def _open(
        self, name: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = await self.proxy.resolve(name, port)
        last: Exception | None = None
        for address, target_port in addresses:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(address, target_port, limit=BUF),
                    self.limits.connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                last = exc
        raise Denied(f"cannot connect to {name}:{port}: {last or 'no address'}", 502)

    async def _connect(self, authority: str) -> None:
        host, port = _split_authority(authority)
        if port is None:
            raise Denied("CONNECT needs host:port", 400)
        name = self._check(host, port)
        up_reader, up_writer = await self._open(name, port)
        self.entry.result = "allowed"
        try:
            self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self.writer.drain()
            await self._splice(up_reader, up_writer)
        finally:
            up_writer.close()

    async def _forward(
        self, method: str, url: str, version: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or 80
        except ValueError:
            raise Denied("malformed URL", 400) from None
        if "@" in parts.netloc or not parts.hostname:
            raise Denied("URL must be http://host[:port]/path (no user info)", 400)
        name = self._check(parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        authority = name if port == 80 else f"{name}:{port}"
        out = [f"{method} {path} ".encode("latin-1") + version, b"host: " + authority.encode()]
        out += [k + b": " + v for k, v in headers if k.lower() not in _HOP]
        # One request per upstream connection: nothing after it reaches another host.
        out.append(b"connection: close")
        up_reader, up_writer = await self._open(name, port)
        self.entry.result = "allowed"
        try:
            up_writer.write(b"\r\n".join(out) + b"\r\n\r\n")
            await up_writer.drain()
            await self._splice(up_reader, up_writer)
        finally:
            up_writer.close()

    async def _splice(
        self, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        last = [loop.time()]
        idle = self.limits.idle_timeout

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: str) -> None:
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(src.read(BUF), idle)
                    except TimeoutError:
                        if loop.time() - last[0] < idle:
                            continue  # the other direction is busy
                        self.entry.reason = "idle timeout"
                        break
                    if not chunk:
                        if dst.can_write_eof():
                            dst.write_eof()
                        return
                    last[0] = loop.time()
                    setattr(self.entry, counter, getattr(self.entry, counter) + len(chunk))
                    dst.write(chunk)
                    # Bounded: one chunk in flight; a peer that stops reading idles out.
                    await asyncio.wait_for(dst.drain(), idle)
            except (ConnectionError, OSError, TimeoutError):
                pass
            # Ending one way abnormally ends both.
            self.writer.close()
            up_writer.close()

        await asyncio.gather(
            pump(self.reader, up_writer, "sent"), pump(up_reader, self.writer, "received")
        )

    async def _credential(self, method: str, headers: list[tuple[bytes, bytes]]) -> None:
        if method != "POST":
            raise Denied("the credential endpoint takes POST", 405)
        self.entry.host = "git-credential"
        self.entry.counted = False
        length = next((v for k, v in headers if k.lower() == b"content-length"), None)
        if length is None or not length.strip().isdigit():
            raise Denied("content-length required", 411)
        if int(length) > MAX_CREDENTIAL_BODY:
            raise Denied("credential request too large", 413)
        try:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(length)), self.limits.header_timeout
            )
        except (TimeoutError, asyncio.IncompleteReadError):
            raise Denied("incomplete credential request", 400) from None
        fields = parse_credential_request(body)
        host, _ = _split_authority(fields.get("host", ""))
        if fields.get("protocol") not in ("http", "https"):
            CREDENTIALS.inc(result="denied")
            raise Denied("credentials are for http and https only")
        try:
            name = normalise_host(host)
        except Denied:
            CREDENTIALS.inc(result="denied")
            raise
        self.entry.host = f"git-credential:{name}"
        if not self.listener.allow.allows(name):
            CREDENTIALS.inc(result="denied")
            raise Denied(f"{name} is not in this vm's network allowlist")
        cred = self.proxy.credentials.get(name)
        if cred is None:
            CREDENTIALS.inc(result="none")
            raise Denied(f"no credential for {name}", 404)
        CREDENTIALS.inc(result="answered")
        self.entry.result = "allowed"
        self.entry.reason = "credential answered"
        await _reply(self.writer, 200, f"username={cred.username}\npassword={cred.password}\n")


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip(), value.strip()


def _split_authority(text: str) -> tuple[str, int | None]:
    """``host:port`` / ``[v6]:port`` / ``host`` → (host, port); a bad port is a 400."""
    if text.startswith("["):
        host, _, rest = text.partition("]")
        host, port_text = host + "]", rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Denied(f"bad port in {text[:100]!r}", 400)
    return host, int(port_text)


async def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = (text + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(head.encode() + body)
        await writer.drain()


class EgressProxy:
    """Host-wide: resolver overrides, credentials, limits, and one listener per sandbox.

    ``serve(sandbox, control_dir, allow)`` starts (or restarts) a sandbox's listener;
    ``stop(sandbox)`` ends it and its connections."""

    def __init__(
        self,
        *,
        resolve: dict[str, Target] | None = None,
        credentials: dict[str, Credential] | None = None,
        limits: EgressLimits | None = None,
    ) -> None:
        self.overrides = dict(resolve or {})
        self.credentials = dict(credentials or {})
        self.limits = limits or EgressLimits()
        self._served: dict[str, SandboxEgress] = {}
        # Lookups run on our own threads: names a sandbox picks (an allowed wildcard's
        # slow DNS server) must not tie up the default executor the Docker calls use.
        self._dns = ThreadPoolExecutor(max_workers=4, thread_name_prefix="egress-dns")

    async def serve(
        self,
        sandbox: str,
        control_dir: str | os.PathLike[str],
        allow: Iterable[str],
        *,
        container: str | ContainerPeer | None,
    ) -> SandboxEgress:
        """Listen on ``<control_dir>/egress.sock`` for ``sandbox``; ``container`` (its
        64-hex Docker id) is the only one whose processes may connect (``None``: no
        peer check — for tests that connect from the host)."""
        old = self._served.pop(sandbox, None)
        if old is not None:
            await old.close()
        peer = ContainerPeer(container) if isinstance(container, str) else container
        listener = SandboxEgress(
            self,
            sandbox,
            Path(control_dir) / EGRESS_SOCKET_NAME,
            Allowlist.of(list(allow)),
            peer,
        )
        await listener.start()
        self._served[sandbox] = listener
        return listener

    def serving(self, sandbox: str) -> bool:
        return sandbox in self._served

    async def stop(self, sandbox: str) -> None:
        listener = self._served.pop(sandbox, None)
        if listener is not None:
            await listener.close()

    async def close(self) -> None:
        for sandbox in list(self._served):
            await self.stop(sandbox)
        self._dns.shutdown(wait=False, cancel_futures=True)

    async def resolve(self, name: str, port: int) -> list[tuple[str, int]]:
        """Addresses to connect to for an allowed name: the override's, else the
        public addresses DNS gives (a name resolving only to loopback, private or
        link-local addresses is refused: no DNS rebinding into the host's networks)."""
        target = self.overrides.get(name)
        if target is not None:
            return [(target.address, target.port or port)]
        if name == "localhost" or name.endswith(".localhost"):
            raise Denied(f"{name} is the host's loopback")
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.run_in_executor(
                    self._dns, socket.getaddrinfo, name, port, 0, socket.SOCK_STREAM
                ),
                self.limits.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise Denied(f"cannot resolve {name}: {exc}", 502) from None
        addresses = [str(info[4][0]) for info in infos]
        public = [a for a in dict.fromkeys(addresses) if is_public(a)]
        if not public:
            raise Denied(f"{name} resolves to no public address ({', '.join(addresses)})")
        return [(a, port) for a in public]

    def _record(self, sandbox: str, entry: _Log) -> None:
        if entry.counted:
            CONNECTIONS.inc(result=entry.result)
        if entry.sent:
            BYTES.inc(entry.sent, direction="sent")
        if entry.received:
            BYTES.inc(entry.received, direction="received")
        log.info(
            "egress sandbox=%s host=%s port=%d result=%s sent=%d received=%d%s",
            sandbox,
            entry.host,
            entry.port,
            entry.result,
            entry.sent,
            entry.received,
            f" reason={entry.reason!r}" if entry.reason else "",
        )
