"""Who may reach what: host-name allowlists, resolver overrides, address checks and
host-side git credentials (docs/egress.md)."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)


class EgressConfigError(ValueError):
    """A host setting for the egress proxy (resolver overrides, credentials) is malformed."""


class Denied(Exception):
    """A request the proxy refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def is_ip_literal(host: str) -> bool:
    text = host.strip("[]")
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    # Numeric forms the C resolver accepts as IPv4 (``2130706433``, ``0x7f.1``, ``127.1``).
    return bool(_NUMERIC.fullmatch(text))


def normalise_host(host: str) -> str:
    """Lower case, no trailing dot; a DNS name (letters, digits, ``-``, dots) or
    :class:`Denied`. IP literals are refused: the allowlist is of names."""
    name = host.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise Denied("empty host name", 400)
    if is_ip_literal(name) or ":" in name:
        raise Denied(f"IP addresses are not allowed, only host names: {host!r}")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise Denied(f"not a valid host name: {host[:100]!r}", 400)
    return name


def normalise_pattern(pattern: str) -> str:
    """An allowlist entry: a host name or ``*.`` and a host name (its subdomains)."""
    if pattern.startswith("*."):
        return "*." + normalise_host(pattern[2:])
    return normalise_host(pattern)


@dataclass(frozen=True)
class Allowlist:
    """Exact names and ``*.example.com`` wildcards (subdomains, not the name itself)."""

    patterns: tuple[str, ...]

    @classmethod
    def of(cls, patterns: list[str] | tuple[str, ...]) -> Allowlist:
        return cls(tuple(sorted({normalise_pattern(p) for p in patterns})))

    def allows(self, name: str) -> bool:
        for pattern in self.patterns:
            if pattern.startswith("*."):
                if name.endswith(pattern[1:]):
                    return True
            elif name == pattern:
                return True
        return False


@dataclass(frozen=True)
class Target:
    """Where an override sends a name: an address and optionally a fixed port."""

    address: str
    port: int | None = None


def parse_resolve(spec: str) -> dict[str, Target]:
    """``name=address[:port],...`` (IPv6 addresses in brackets) → overrides.

    A mapped name resolves to that address only, loopback and private ones
    included; with a port, connections to the name go to that port whatever port
    the client asked for (the client's port must still be an allowed one)."""
    out: dict[str, Target] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not target:
            raise EgressConfigError(
                f"AGENTVM_EGRESS_RESOLVE: expected name=address[:port]: {item!r}"
            )
        try:
            host = normalise_host(name)
        except Denied as exc:
            raise EgressConfigError(f"AGENTVM_EGRESS_RESOLVE: {exc.reason}") from None
        address, port = _split_address(target)
        out[host] = Target(address, port)
    return out


def _split_address(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        address, port_text = text.split(":")
    else:
        address, port_text = text, ""
    try:
        ipaddress.ip_address(address)
        port = int(port_text) if port_text else None
    except ValueError:
        raise EgressConfigError(
            f"AGENTVM_EGRESS_RESOLVE: not an address[:port]: {text!r}"
        ) from None
    if port is not None and not 0 < port < 65536:
        raise EgressConfigError(f"AGENTVM_EGRESS_RESOLVE: bad port in {text!r}")
    return address, port


def is_public(address: str) -> bool:
    """Globally routable: not loopback, private, link-local, multicast, reserved, …
    (IPv4-mapped IPv6 addresses are judged by their IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Credential:
    username: str
    password: str


def load_credentials(spec: str | None) -> dict[str, Credential]:
    """``AGENTVM_GIT_CREDENTIALS``: a JSON object ``{"host": {"username", "password"}}``
    or the path of a git-credentials file (``https://user:token@host`` lines)."""
    if not spec or not spec.strip():
        return {}
    text = spec.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EgressConfigError(f"AGENTVM_GIT_CREDENTIALS: invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise EgressConfigError("AGENTVM_GIT_CREDENTIALS: expected an object")
        out: dict[str, Credential] = {}
        for host, entry in data.items():
            if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) for k in ("username", "password")
            ):
                raise EgressConfigError(
                    f"AGENTVM_GIT_CREDENTIALS: {host!r} needs string username and password"
                )
            out[_credential_host(host)] = Credential(entry["username"], entry["password"])
        return out
    try:
        lines = Path(text).expanduser().read_text().splitlines()
    except OSError as exc:
        raise EgressConfigError(f"AGENTVM_GIT_CREDENTIALS: cannot read {text}: {exc}") from None
    out = {}
    for line in lines:
        url = urlsplit(line.strip())
        if url.hostname and url.username is not None and url.password is not None:
            out[_credential_host(url.hostname)] = Credential(
                unquote(url.username), unquote(url.password)
            )
    return out


def _credential_host(host: str) -> str:
    try:
        return normalise_host(host)
    except Denied as exc:
        raise EgressConfigError(f"AGENTVM_GIT_CREDENTIALS: {exc.reason}") from None


def parse_credential_request(body: bytes) -> dict[str, str]:
    """git's credential protocol: ``key=value`` lines."""
    fields: dict[str, str] = {}
    for line in body.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields


def parse_ports(spec: str) -> frozenset[int]:
    """``AGENTVM_EGRESS_PORTS``: comma-separated TCP ports, e.g. ``80,443``."""
    try:
        ports = frozenset(int(p) for p in spec.split(",") if p.strip())
    except ValueError:
        raise EgressConfigError(f"AGENTVM_EGRESS_PORTS: not a list of ports: {spec!r}") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise EgressConfigError(f"AGENTVM_EGRESS_PORTS: ports must be 1-65535: {spec!r}")
    return ports
