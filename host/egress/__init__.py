"""The host's egress proxy for allowlist vms and their git credentials (docs/egress.md)."""

from .container import EGRESS_LABEL, allow_from_labels, container_env, container_labels
from .policy import (
    Allowlist,
    Credential,
    Denied,
    EgressConfigError,
    Target,
    load_credentials,
    normalise_host,
    parse_ports,
    parse_resolve,
)
from .proxy import EgressLimits, EgressProxy, SandboxEgress

__all__ = [
    "EGRESS_LABEL",
    "Allowlist",
    "Credential",
    "Denied",
    "EgressConfigError",
    "EgressLimits",
    "EgressProxy",
    "SandboxEgress",
    "Target",
    "allow_from_labels",
    "container_env",
    "container_labels",
    "load_credentials",
    "normalise_host",
    "parse_ports",
    "parse_resolve",
]
