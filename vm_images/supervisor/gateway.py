"""Loopback forwarder to the host's LLM gateway (docs/gateway.md).

The host serves an Anthropic-compatible HTTP endpoint on
``<control dir>/gateway.sock``; we expose it on ``127.0.0.1:<port>`` (``forward``).
When the host is not serving a gateway the client gets a 503 with an
Anthropic-shaped error body instead of a reset. When the host went away (killed or
restarting) a connection waits up to ``AGENTVM_GATEWAY_WAIT`` seconds (default 60)
for it to serve the gateway again first (forward.py), so the agent's retry of a
model call the host's death cut reaches the new host instead of failing at once.
"""

from __future__ import annotations

import asyncio
import json
import os

from . import protocol as P
from .forward import port_from_env, start_forwarder

# How long a model call waits for a host that went away (seconds).
GATEWAY_WAIT_ENV = "AGENTVM_GATEWAY_WAIT"
GATEWAY_WAIT = 60.0


def gateway_port() -> int:
    return port_from_env(P.GATEWAY_PORT_ENV, P.GATEWAY_PORT)


def gateway_wait() -> float:
    raw = os.environ.get(GATEWAY_WAIT_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else GATEWAY_WAIT
    except ValueError:
        return GATEWAY_WAIT


def _unavailable(reason: str) -> bytes:
    body = json.dumps(
        {
            "type": "error",
            "error": {"type": "api_error", "message": f"agentvm LLM gateway unavailable: {reason}"},
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


async def start_gateway(control_dir: str) -> asyncio.AbstractServer | None:
    """Listen on loopback; ``None`` (logged) if the port is taken."""
    path = os.path.join(control_dir, P.GATEWAY_SOCKET_NAME)
    return await start_forwarder(
        "gateway", gateway_port(), path, _unavailable, wait_s=gateway_wait()
    )
