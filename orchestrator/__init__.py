"""agentvm's durable actor runtime: actors, state, queues, workflows and storage.

Define actors with :func:`actor`, collect them with :func:`setup`, run them on an
:class:`Engine`, and reach them through a :class:`Client` — in-process (``engine.client()``) or
over HTTP (``create_client(url)``).
"""

from typing import TYPE_CHECKING, Any

from ._instance import Event, Subscription
from .client import ActorAccessor, ActorHandle, Client
from .config import EngineConfig
from .contexts import ActorContext
from .definitions import ActorDefinition, ActorOptions, Registry, actor, event, queue, setup
from .engine import Engine, HistoryEntry, QueuedMessage, WorkflowHistory
from .errors import (
    ActionNotFound,
    ActorAlreadyExists,
    ActorNotFound,
    AgentVMError,
    CriticalError,
    HistoryDivergedError,
    InvalidRequest,
    JoinError,
    MessageTooLarge,
    NotSerializable,
    QueueFull,
    QueueNotFound,
    RaceError,
    StepExhaustedError,
    StepTimeoutError,
    StorageFull,
    UnknownActorType,
    WorkflowError,
)
from .inspect import Inspector
from .queues import Message, SendResult
from .workflow import Loop, RaceResult, WorkflowContext, workflow

if TYPE_CHECKING:
    from .remote import (
        HttpTransport,
        RemoteClient,
        SyncClient,
        create_client,
        create_sync_client,
    )

# The HTTP client (and httpx) load on first use, not with the engine.
_REMOTE = {"HttpTransport", "RemoteClient", "SyncClient", "create_client", "create_sync_client"}


def __getattr__(name: str) -> Any:
    if name in _REMOTE:
        from . import remote

        return getattr(remote, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


__all__ = [
    "ActionNotFound",
    "ActorAccessor",
    "ActorAlreadyExists",
    "ActorContext",
    "ActorDefinition",
    "ActorHandle",
    "ActorNotFound",
    "ActorOptions",
    "AgentVMError",
    "Client",
    "CriticalError",
    "Engine",
    "EngineConfig",
    "Event",
    "HistoryDivergedError",
    "HistoryEntry",
    "HttpTransport",
    "Inspector",
    "InvalidRequest",
    "JoinError",
    "Loop",
    "Message",
    "MessageTooLarge",
    "NotSerializable",
    "QueueFull",
    "QueueNotFound",
    "QueuedMessage",
    "RaceError",
    "RaceResult",
    "Registry",
    "RemoteClient",
    "SendResult",
    "StepExhaustedError",
    "StepTimeoutError",
    "StorageFull",
    "Subscription",
    "SyncClient",
    "UnknownActorType",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowHistory",
    "actor",
    "create_client",
    "create_sync_client",
    "event",
    "queue",
    "setup",
    "workflow",
]
