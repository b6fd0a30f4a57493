"""The host's LLM gateway (docs/gateway.md)."""

from .gateway import PLACEHOLDER_KEY, SESSION_HEADER, LLMGateway, SandboxGateway, anthropic_error
from .limits import GatewayLimits
from .models import Usage, UsageRecord, UsageReport
from .routes import ALLOWED

__all__ = [
    "ALLOWED",
    "PLACEHOLDER_KEY",
    "SESSION_HEADER",
    "GatewayLimits",
    "LLMGateway",
    "SandboxGateway",
    "Usage",
    "UsageRecord",
    "UsageReport",
    "anthropic_error",
]
