"""Server settings from ``AGENTVM_*`` environment variables (every one has a safe default)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTVM_", extra="ignore")

    bind: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(6420, ge=0, le=65535, description="TCP port (0 picks a free one)")
    token: str | None = Field(
        None, description="bearer token required on every request except /healthz"
    )
    max_body: int = Field(1024 * 1024, ge=1, description="largest JSON request body, in bytes")
    max_upload: int = Field(
        64 * 1024 * 1024, ge=1, description="largest file upload (PUT /vms/.../files/...)"
    )
    max_download: int = Field(
        1024 * 1024 * 1024,
        ge=0,
        description="largest file download (GET /vms/.../files/...; streamed, regular files only)",
    )
    max_wait_ms: int = Field(
        3_600_000, ge=0, description="longest a queue send with wait=true may wait"
    )
    bench_routes: bool = Field(False, description="add the bare echo route bench/http_api.py uses")
    registry: str | None = Field(
        None, description="'module:function' returning the Registry to serve"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names accepted besides loopback ones and the bind address "
        "(comma-separated; '*' accepts any: only behind a proxy that checks Host itself)",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser origins (scheme://host[:port], comma-separated) allowed to call "
        "the API besides the server's own origin",
    )
    max_json_depth: int = Field(
        64, ge=1, le=256, description="deepest nesting of arrays/objects in a JSON body"
    )
    subscriber_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="broadcast bytes buffered for one SSE/WebSocket subscriber before it is "
        "dropped as too slow",
    )
    subscriber_max_events: int = Field(
        10_000, ge=1, description="broadcasts buffered for one subscriber before it is dropped"
    )
    subscriber_write_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="how long the final error to a dropped subscriber may take to write",
    )
    preview_connect_timeout_s: float = Field(
        5.0, gt=0, le=60, description="preview proxy: deadline to connect to a sandbox port"
    )
    preview_max_connections: int = Field(
        64,
        ge=1,
        description="preview proxy: HTTP requests and WebSockets open at once per vm "
        "(each may hold a 4 MiB channel window on the host; 429 beyond)",
    )
    preview_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="preview proxy: a request whose sandbox port sends or takes nothing for "
        "this long is closed (a WebSocket may stay quiet; its writes have this deadline)",
    )

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, v: str | None) -> str | None:
        return v or None


class InsecureBindError(RuntimeError):
    """Refusing to listen off loopback without a token."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(bind: str, token: str | None) -> None:
    """Raise :class:`InsecureBindError` when ``bind`` is not loopback and no token is set."""
    if not token and not is_loopback(bind):
        raise InsecureBindError(
            f"refusing to listen on {bind!r} without a token: anyone who can reach this "
            "address could run commands in your sandboxes. Set AGENTVM_TOKEN (or --token), "
            "or bind to 127.0.0.1."
        )
