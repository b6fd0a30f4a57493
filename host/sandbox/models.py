"""Pydantic models for sandbox specs and call results."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ExecResult(BaseModel):
    """Outcome of a command run to completion.

    ``stdout``/``stderr`` are UTF-8 text (invalid bytes replaced); the exact bytes
    are in ``stdout_bytes``/``stderr_bytes`` (not serialised).
    """

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    stdout_bytes: bytes = Field(default=b"", exclude=True, repr=False)
    stderr_bytes: bytes = Field(default=b"", exclude=True, repr=False)

    @classmethod
    def from_bytes(
        cls, exit_code: int, stdout: bytes, stderr: bytes, timed_out: bool, truncated: bool
    ) -> ExecResult:
        return cls(
            exit_code=exit_code,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
            timed_out=timed_out,
            truncated=truncated,
            stdout_bytes=stdout,
            stderr_bytes=stderr,
        )


class ProcessInfo(BaseModel):
    pid: int
    argv: list[str]
    running: bool
    exit_code: int | None = None
    started_at: float


class ProcessOutput(BaseModel):
    """A chunk of a spawned process's output (``process_output`` event)."""

    type: Literal["process_output"] = "process_output"
    pid: int
    stream: Literal["stdout", "stderr"]
    data: bytes


class ProcessExit(BaseModel):
    """A spawned process ended and its output was delivered (``process_exit`` event)."""

    type: Literal["process_exit"] = "process_exit"
    pid: int
    exit_code: int


ProcessEvent = ProcessOutput | ProcessExit


class FileStat(BaseModel):
    """A file, directory or link; ``name`` is relative to the listed root in recursive listings."""

    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float


def _host_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (AttributeError, OSError, ValueError):
        return 64 * 1024


# Upper bounds: a caller must not be able to lift the cgroup limits by asking for more
# than the machine has (a limit above the host's RAM or CPUs is no limit at all).
MAX_MEMORY_MB = max(16, min(64 * 1024, _host_memory_mb()))
MAX_CPUS = float(os.cpu_count() or 1)
MAX_PIDS = 32768


class SandboxLimits(BaseModel):
    """Resource limits of one sandbox (enforced by the container's cgroup).

    Bounded above by the host: memory and ``/tmp`` (RAM-backed) by its RAM (at most
    64 GiB), CPUs by its CPU count, pids by 32768."""

    model_config = ConfigDict(frozen=True)

    memory_mb: int = Field(default=1024, ge=16, le=MAX_MEMORY_MB)
    cpus: float = Field(default=1.0, ge=0.01, le=MAX_CPUS)
    pids: int = Field(default=512, ge=16, le=MAX_PIDS)
    tmp_mb: int = Field(default=256, ge=1, le=MAX_MEMORY_MB)
    # Size of /home/user, a loop-mounted ext4 image (host/sandbox/disk.py) that only
    # grows as it is written; fixed when the volume is created. At most 1 TiB.
    disk_mb: int = Field(default=10240, ge=16, le=1024 * 1024)


class SandboxSpec(BaseModel):
    """What to create. ``key`` is the owning actor key (empty for a warm-pool container)."""

    image: str
    key: list[str] = Field(default_factory=list)
    pool: str | None = None
    network: Literal["none", "bridge"] = "none"
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class SandboxInfo(BaseModel):
    """A sandbox container as Docker reports it."""

    id: str
    name: str
    status: str  # created | running | exited | ...
    image: str
    host_id: str
    key: list[str]
    pool: str | None
    volume: str
    labels: dict[str, str]
    exit_code: int | None = None
    oom_killed: bool = False
