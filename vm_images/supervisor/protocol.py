"""Wire format shared by the in-sandbox supervisor and the host (standard library only).

A frame is::

    u32 big-endian  body length N   (N = 4 + H + P)
    u32 big-endian  header length H
    H bytes         header, UTF-8 JSON object
    P bytes         payload, raw bytes (binary-safe, never base64)

Every header has ``t`` (frame type) and ``ch`` (channel id; 0 is the link itself).
See docs/protocol.md for the frame types and the flow-control rules.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

VERSION = 1

# Largest body a peer accepts; anything bigger is a protocol violation.
MAX_FRAME = 4 * 1024 * 1024 + 64 * 1024
MAX_HEADER = 64 * 1024
# Bytes of data frames a sender may have outstanding per channel before it needs credit.
WINDOW = 4 * 1024 * 1024
# Payload size used when streaming bulk data.
CHUNK = 256 * 1024
# The receiver returns credit once this much was consumed, to keep frames few.
CREDIT_THRESHOLD = WINDOW // 4

SOCKET_NAME = "control.sock"
CONTAINER_CONTROL_DIR = "/run/agentvm"
TOKEN_ENV = "AGENTVM_SUPERVISOR_TOKEN"
# The host's LLM gateway: an HTTP socket beside control.sock; the supervisor exposes it
# inside the sandbox on 127.0.0.1:<port> (docs/gateway.md).
GATEWAY_SOCKET_NAME = "gateway.sock"
GATEWAY_PORT_ENV = "AGENTVM_GATEWAY_PORT"
GATEWAY_PORT = 4141
# What in-sandbox processes send as their API key when they have none: the gateway
# replaces it with the host's key (which never enters the sandbox).
GATEWAY_PLACEHOLDER_KEY = "agentvm-gateway"

# Frame types.
HELLO = "hello"  # supervisor -> host, ch 0: {"version", "token", "pid", "boot_id"}
WELCOME = "welcome"  # host -> supervisor, ch 0: {"version"}
CALL = "call"  # host -> supervisor: open channel ch, {"op", "args"}; payload = op data
DATA = "data"  # both ways: {"s": stream name}; payload = bytes (counts against credit)
EOF = "eof"  # both ways: {"s": stream name}; no more data on that stream
CREDIT = "credit"  # both ways: {"n": bytes}; the peer may send n more data bytes
EVENT = "event"  # supervisor -> host: {"kind", ...} progress on an open channel
RESULT = "result"  # supervisor -> host: closes ch; {"ok": true, "value"} or {"ok": false, "error"}
CANCEL = "cancel"  # host -> supervisor: abandon channel ch (the supervisor still sends RESULT)
PING = "ping"  # either way, ch 0
PONG = "pong"

_LEN = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Serialise one frame."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_LEN.pack(4 + len(head) + len(payload), len(head)), head, payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    """Read one frame; ``None`` on a clean end of stream between frames."""
    try:
        prefix = await reader.readexactly(8)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("stream ended inside a frame prefix") from exc
    body_len, head_len = _LEN.unpack(prefix)
    if body_len > MAX_FRAME or head_len > MAX_HEADER or head_len + 4 > body_len:
        raise ProtocolError(f"bad frame sizes body={body_len} header={head_len}")
    try:
        head = await reader.readexactly(head_len)
        payload = await reader.readexactly(body_len - 4 - head_len)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame") from exc
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise ProtocolError("frame header is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header lacks a type")
    if not isinstance(header.get("ch", 0), int):
        raise ProtocolError("frame channel is not an integer")
    return header, payload


def error_body(code: str, message: str, path: str | None = None) -> dict[str, Any]:
    """The ``error`` member of a failed RESULT."""
    body: dict[str, Any] = {"code": code, "message": message}
    if path is not None:
        body["path"] = path
    return body
