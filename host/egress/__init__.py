"""The host's egress proxy for allowlist vms and their git credentials (docs/egress.md)."""

from .policy import (
    Allowlist,
    Credential,
    Denied,
    EgressConfigError,
    Target,
    load_credentials,
    normalise_host,
    parse_resolve,
)
from .proxy import EgressLimits, EgressProxy, SandboxEgress

__all__ = [
    "Allowlist",
    "Credential",
    "Denied",
    "EgressConfigError",
    "EgressLimits",
    "EgressProxy",
    "SandboxEgress",
    "Target",
    "load_credentials",
    "normalise_host",
    "parse_resolve",
]
