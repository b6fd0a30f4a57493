"""Loopback forwarder to the host's egress proxy (docs/egress.md).

A vm with a host allowlist has no network interface either: the host serves an
HTTP(S) CONNECT proxy on ``<control dir>/egress.sock`` and we expose it on
``127.0.0.1:<port>``; processes we start get ``HTTP(S)_PROXY`` pointing at it and
git a credential helper (``git_credential``) that asks the host. The host tells
us the vm has an allowlist through the container's environment (``EGRESS_ENV``).
"""

from __future__ import annotations

import asyncio
import os

from .forward import port_from_env, start_forwarder

EGRESS_SOCKET_NAME = "egress.sock"
# Set (to "1") in the container's environment by the host for allowlist vms.
EGRESS_ENV = "AGENTVM_EGRESS"
EGRESS_PORT_ENV = "AGENTVM_EGRESS_PORT"
EGRESS_PORT = 3128
# The proxy answers this origin-form path itself: git's credential protocol.
CREDENTIAL_PATH = "/_agentvm/git-credential"


def egress_port() -> int:
    return port_from_env(EGRESS_PORT_ENV, EGRESS_PORT)


def egress_enabled() -> bool:
    return os.environ.get(EGRESS_ENV, "") == "1"


def egress_env() -> dict[str, str]:
    """Environment for processes of an allowlist vm (empty for the others)."""
    if not egress_enabled():
        return {}
    proxy = f"http://127.0.0.1:{egress_port()}"
    # -I: a repository's files cannot shadow the helper's modules.
    helper = f"!python3 -I -m agentvm_supervisor.git_credential {egress_port()}"
    env = {k: proxy for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env.update(
        {
            # The LLM gateway and the proxy itself are on loopback: never proxied.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": helper,
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    return env


def _unavailable(reason: str) -> bytes:
    body = f"agentvm egress proxy unavailable: {reason}\n".encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: text/plain\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


async def start_egress(control_dir: str) -> asyncio.AbstractServer | None:
    """The forwarder for an allowlist vm; ``None`` for the others (or port taken)."""
    if not egress_enabled():
        return None
    path = os.path.join(control_dir, EGRESS_SOCKET_NAME)
    return await start_forwarder("egress", egress_port(), path, _unavailable)
