"""agentvm's durable actor runtime: actors, state, queues, workflows and storage.

Define actors with :func:`actor`, collect them with :func:`setup`, run them on an
:class:`Engine`, and reach them through a :class:`Client` — in-process (``engine.client()``) or
over HTTP (``create_client(url)``).
"""

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
    UnknownActorType,
    WorkflowError,
)
from .queues import Message, SendResult
from .remote import HttpTransport, RemoteClient, SyncClient, create_client, create_sync_client
from .workflow import Loop, RaceResult, WorkflowContext, workflow

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
