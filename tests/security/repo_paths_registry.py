"""The registry ``tests/security/test_repo_paths.py`` serves: the built-in
orchestrators exactly as ``agentvm serve`` configures them (repository policy from
``AGENTVM_REPO_ROOTS``), with their workflows and run handlers switched off so that accepted
messages stay in the queue for the test to inspect (there is no vm actor here)."""

from __future__ import annotations

import dataclasses

from host.app import build_registry
from orchestrator import Registry


def build() -> Registry:
    registry = build_registry()
    for name in ("automator", "pipeline"):
        definition = registry.actors[name]
        definition.run = None
        # Their queues are run queues: without a handler a message stays queued.
        definition.queues = {
            q: dataclasses.replace(spec, run=None, concurrency=None)
            for q, spec in definition.queues.items()
        }
    return registry
