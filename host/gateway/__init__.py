"""The host's LLM gateway (docs/gateway.md)."""

from .gateway import PLACEHOLDER_KEY, SESSION_HEADER, LLMGateway, SandboxGateway, anthropic_error
from .models import Usage, UsageRecord, UsageReport

__all__ = [
    "PLACEHOLDER_KEY",
    "SESSION_HEADER",
    "LLMGateway",
    "SandboxGateway",
    "Usage",
    "UsageRecord",
    "UsageReport",
    "anthropic_error",
]
