"""Loopback forwarder to the host's LLM gateway (docs/gateway.md).

The host serves an Anthropic-compatible HTTP endpoint on
``<control dir>/gateway.sock``; we expose it on ``127.0.0.1:<port>`` (``forward``).
When the host is not serving a gateway the client gets a 503 with an
Anthropic-shaped error body instead of a reset.
"""

from __future__ import annotations

import asyncio
import json
import os

from . import protocol as P
from .forward import port_from_env, start_forwarder


def gateway_port() -> int:
    return port_from_env(P.GATEWAY_PORT_ENV, P.GATEWAY_PORT)


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
    return await start_forwarder("gateway", gateway_port(), path, _unavailable)
