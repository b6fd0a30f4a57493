"""Agent types: which command runs in the sandbox for an agent type.

The registry is ``vm_images.agents`` (``get_agent(name)`` → ``.command``, ``.env``,
``.bundles``; docs/agents.md). Before that module exists, the ``agents`` field of
the bundles in ``vm_images.bundles`` is used. A :class:`SessionManager` may add or
override types with its ``agents`` argument (tests, ad-hoc agents).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from .errors import UnknownAgentType


class AgentCommand(BaseModel):
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)


AgentOverrides = Mapping[str, "AgentCommand | Sequence[str]"]


def _from_registry(name: str) -> AgentCommand | None:
    try:
        registry: Any = importlib.import_module("vm_images.agents")
    except ImportError:
        registry = None
    if registry is not None and hasattr(registry, "get_agent"):
        try:
            spec = registry.get_agent(name)
        except KeyError:
            return None
        return AgentCommand(
            command=[str(a) for a in spec.command], env=dict(getattr(spec, "env", None) or {})
        )
    from vm_images.bundles import BUNDLES

    for bundle in BUNDLES.values():
        if name in bundle.agents:
            return AgentCommand(command=list(bundle.agents[name]))
    return None


def known_types(overrides: AgentOverrides | None = None) -> list[str]:
    names = set(overrides or ())
    try:
        registry: Any = importlib.import_module("vm_images.agents")
        names |= set(registry.agent_types())
    except (ImportError, AttributeError):
        from vm_images.bundles import BUNDLES

        for bundle in BUNDLES.values():
            names |= set(bundle.agents)
    return sorted(names)


def resolve_agent(name: str, overrides: AgentOverrides | None = None) -> AgentCommand:
    if overrides and name in overrides:
        value = overrides[name]
        return value if isinstance(value, AgentCommand) else AgentCommand(command=list(value))
    found = _from_registry(name)
    if found is None:
        known = ", ".join(known_types(overrides)) or "none"
        raise UnknownAgentType(f"unknown agent type {name!r}; known: {known}", agent_type=name)
    return found
