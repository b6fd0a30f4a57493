"""The actor types ``agentvm serve`` runs, assembled in one place.

Add new built-in actor types (the vm actor, the built-in orchestrators) here;
``agentvm serve --registry module:function`` (or ``AGENTVM_REGISTRY``) serves a
different registry instead.
"""

from __future__ import annotations

from orchestrator import Registry


def build_registry() -> Registry:
    """For now a few of the workflow examples; the vm actor and the built-in
    orchestrators join them in later issues."""
    from examples import workflows as ex

    registry = Registry({})
    for part in (
        ex.counter_loop(),
        ex.request_response(),
        ex.queue_worker(),
        ex.approval_gate(),
        ex.progress_broadcast(),
    ):
        for name, definition in part.actors.items():
            registry.add(name, definition)
    return registry
