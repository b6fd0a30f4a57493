"""Per-vm options: given in the create input, laid over the host's defaults."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from host.egress.policy import Denied, normalise_pattern
from host.sandbox.models import SandboxLimits
from orchestrator.errors import InvalidRequest
from vm_images.bundles import resolve


class NetworkAllow(BaseModel):
    """Egress through the host's proxy to these host names only (docs/egress.md):
    exact names and ``*.example.com`` wildcards; the container has no interface."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(min_length=1, max_length=256)

    @field_validator("allow")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        try:
            return sorted({normalise_pattern(n) for n in names})
        except Denied as exc:
            raise ValueError(exc.reason) from None


class VmOptions(BaseModel):
    """What a vm runs on: its image (bundles), network, limits, environment and how
    long it may sit idle before its container is stopped (``/home/user`` is kept).

    ``network``: ``"none"`` (default), ``{"allow": [host names]}`` (HTTP(S) through
    the host's egress proxy, still no interface), or ``"bridge"`` — full, unfiltered
    network access: **unsafe**, only for trusted code (docs/egress.md)."""

    model_config = ConfigDict(extra="forbid")

    bundles: list[str] = Field(default_factory=lambda: ["common"])
    network: Literal["none", "bridge"] | NetworkAllow = "none"
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    env: dict[str, str] = Field(default_factory=dict)
    idle_timeout: float = Field(default=300.0, gt=0)

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: Any) -> Any:
        # One clear message instead of one per branch of the union.
        if isinstance(value, dict):
            try:
                return NetworkAllow.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
        if value not in ("none", "bridge") and not isinstance(value, NetworkAllow):
            raise ValueError('must be "none", "bridge" or {"allow": [host names]}')
        return value

    @field_validator("bundles")
    @classmethod
    def _known_bundles(cls, names: list[str]) -> list[str]:
        try:
            resolve(names)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        return sorted(set(names))

    def egress_allow(self) -> list[str] | None:
        """The host allowlist of an allowlist vm, else None."""
        return self.network.allow if isinstance(self.network, NetworkAllow) else None

    def docker_network(self) -> Literal["none", "bridge"]:
        """Docker's network mode: an allowlist vm has none (egress is proxied)."""
        return "none" if isinstance(self.network, NetworkAllow) else self.network

    def container_key(self) -> str:
        """Everything baked into a container at creation; equal keys can share a pool."""
        fixed = self.model_dump(mode="json", exclude={"idle_timeout"})
        return json.dumps(fixed, sort_keys=True, separators=(",", ":"))

    def pool_id(self) -> str:
        """Short label value naming the warm pool for these options."""
        return "p" + hashlib.sha256(self.container_key().encode()).hexdigest()[:10]


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "input"


def parse_options(input: Any, defaults: VmOptions) -> VmOptions:
    """``input`` (the vm's create input: a dict of options, or None) over ``defaults``.

    ``limits`` merge field by field and ``env`` key by key, so ``{"limits":
    {"memory_mb": 512}}`` keeps the default CPU and pid limits. Bad input raises
    :class:`InvalidRequest` naming the field.
    """
    if input is None:
        return defaults.model_copy(deep=True)
    if not isinstance(input, dict):
        raise InvalidRequest(
            f"vm options must be an object, got {type(input).__name__}", field="input"
        )
    merged = defaults.model_dump()
    for name, value in input.items():
        if name == "limits" and isinstance(value, dict):
            merged["limits"] = {**merged["limits"], **value}
        elif name == "env" and isinstance(value, dict):
            merged["env"] = {**merged["env"], **value}
        else:
            merged[name] = value
    try:
        return VmOptions.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_name(first["loc"])
        raise InvalidRequest(
            f"invalid vm option {field}: {first['msg']}", field=field, errors=_errors(exc)
        ) from None


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": _field_name(e["loc"]), "message": e["msg"]} for e in exc.errors()]


def parse_call_options(model: type[BaseModel], opts: Any, action: str) -> Any:
    """Validate an action's trailing options object; InvalidRequest names the field."""
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise InvalidRequest(
            f"{action}: options must be an object, got {type(opts).__name__}", field="options"
        )
    try:
        return model.model_validate(opts)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_name(first["loc"])
        raise InvalidRequest(
            f"{action}: invalid option {field}: {first['msg']}",
            field=field,
            action=action,
            errors=_errors(exc),
        ) from None
