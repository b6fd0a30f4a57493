"""Server settings from ``AGENTVM_*`` environment variables (every one has a safe default)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_wait_ms: int = Field(
        3_600_000, ge=0, description="longest a queue send with wait=true may wait"
    )
    bench_routes: bool = Field(False, description="add the bare echo route bench/http_api.py uses")
    registry: str | None = Field(
        None, description="'module:function' returning the Registry to serve"
    )

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
