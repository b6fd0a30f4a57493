"""The actor types ``agentvm serve`` runs when no ``--registry`` is given.

The host (``host/app.py``) serves the vm actor and the built-in orchestrators;
``agentvm serve --registry module:function`` (or ``AGENTVM_REGISTRY``) serves a
different registry instead, without a sandbox manager.
"""

from __future__ import annotations

from typing import Any

from orchestrator import Registry

from .app import build_registry as _build


def build_registry(manager: Any | None = None) -> Registry:
    """The built-in orchestrators, plus the vm actor when ``manager`` is given."""
    return _build(manager)
