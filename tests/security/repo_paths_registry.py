"""The registry ``tests/security/test_repo_paths.py`` serves: the built-in
orchestrators exactly as ``agentvm serve`` configures them (repository policy from
``AGENTVM_REPO_ROOTS``), with their workflows switched off so that accepted
messages stay in the queue for the test to inspect (there is no vm actor here)."""

from __future__ import annotations

from host.app import build_registry
from orchestrator import Registry


def build() -> Registry:
    registry = build_registry()
    for name in ("automator", "pipeline"):
        registry.actors[name].run = None
    return registry
