"""Sandbox backends: hardened containers driven through the in-sandbox supervisor.

Typical use::

    backend = await DockerBackend.connect(host_id="h1")
    sandbox = await backend.create(SandboxSpec(image=tag, key=["fix-42"]))
    result = await sandbox.exec("git status", cwd="repo")
"""

from .backend import SandboxBackend
from .client import ProcessHandle, SandboxClient
from .connection import SupervisorConnection
from .control import ControlServer
from .docker_backend import DockerBackend
from .errors import (
    DockerUnavailable,
    FileNotFoundInSandbox,
    ProcessNotFound,
    SandboxError,
    SandboxLost,
    SandboxNotFound,
    SandboxTimeout,
    SupervisorError,
)
from .models import (
    ExecResult,
    FileStat,
    ProcessEvent,
    ProcessExit,
    ProcessInfo,
    ProcessOutput,
    SandboxInfo,
    SandboxLimits,
    SandboxSpec,
)
from .sandbox import Sandbox

__all__ = [
    "ControlServer",
    "DockerBackend",
    "DockerUnavailable",
    "ExecResult",
    "FileNotFoundInSandbox",
    "FileStat",
    "ProcessEvent",
    "ProcessExit",
    "ProcessHandle",
    "ProcessInfo",
    "ProcessNotFound",
    "ProcessOutput",
    "Sandbox",
    "SandboxBackend",
    "SandboxClient",
    "SandboxError",
    "SandboxInfo",
    "SandboxLimits",
    "SandboxLost",
    "SandboxNotFound",
    "SandboxSpec",
    "SandboxTimeout",
    "SupervisorConnection",
    "SupervisorError",
]
