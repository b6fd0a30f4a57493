"""The host runtime: what ``agentvm serve`` runs, assembled and torn down in order.

``async with host_runtime(config) as engine:`` opens the LLM gateway and the
sandbox manager (Docker, warm pool, reaper), builds the registry (the vm actor
and the built-in orchestrators), starts the engine (recovering every pending
workflow and re-adopting running sandboxes) and, on exit, stops them in reverse
order — running sandboxes are left for the next start to adopt.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator import Engine, EngineConfig, Registry
from orchestrator.metrics import REGISTRY

log = logging.getLogger("agentvm.host")


class HostSettings(BaseSettings):
    """Sandbox-host settings from ``AGENTVM_*`` variables; every one has a safe default."""

    model_config = SettingsConfigDict(env_prefix="AGENTVM_", extra="ignore")

    host_id: str | None = Field(
        None,
        description="labels this host's containers; default derived from the database "
        "path, so a restart on the same database re-adopts its sandboxes",
    )
    warm_pool: int = Field(2, ge=0, description="started containers kept ready per image")
    cold_pool: int = Field(
        4,
        ge=0,
        le=64,
        description="created, not started containers kept per image behind the warm pool "
        "(no memory; a vm with no warm container only starts one); only with "
        "AGENTVM_WARM_POOL > 0, so AGENTVM_WARM_POOL=0 still means no pooled containers",
    )
    vm_bundles: list[str] = Field(
        default_factory=lambda: ["common", "coding-agent"],
        description="software bundles of a vm unless its create input says otherwise",
    )
    vm_idle_timeout: float = Field(300.0, gt=0, description="seconds before an idle vm stops")
    reap_interval: float = Field(300.0, gt=0, description="seconds between orphan sweeps")
    vm_disk_mb: int = Field(
        10240,
        ge=16,
        le=1024 * 1024,
        description="size of a vm's /home/user in MiB unless its create input says otherwise "
        "(limits.disk_mb; a loop-mounted ext4 image, enforced by the kernel)",
    )
    disk_dir: Path = Field(
        Path("/var/lib/agentvm/disks"),
        description="where the vms' /home/user disk images live (sparse files, one per vm)",
    )
    # The egress proxy of allowlist vms (docs/egress.md).
    egress_resolve: str = Field(
        "",
        description="egress resolver overrides, name=address[:port],... (split-horizon DNS, "
        "tests); only a mapped name may reach a loopback or private address",
    )
    egress_ports: str = Field("80,443", description="TCP ports allowlist vms may connect to")
    egress_max_connections: int = Field(
        64, ge=1, description="open egress-proxy connections per sandbox; more get a 503"
    )
    egress_idle_timeout: float = Field(
        300.0, gt=0, description="seconds without a byte before an egress connection is closed"
    )
    git_credentials: str = Field(
        "",
        description="host-side git credentials for allowlist vms: JSON {host: {username, "
        "password}} or the path of a git-credentials file; never enter a sandbox",
    )
    repo_roots: str = Field(
        "",
        description="host directories (separated by ':', as in PATH) that fixBug/codeReview "
        "may read a local repository from; empty: no host paths (clients upload instead)",
    )
    max_blob: int = Field(
        256 * 2**20, ge=1, description="largest upload to POST /blobs (a repository bundle)"
    )
    blob_store_limit: int = Field(
        4 * 2**30, ge=1, description="bytes all stored blobs may take together"
    )
    blob_ttl: float = Field(
        7 * 86400.0, gt=0, description="seconds a blob is kept after its upload"
    )
    keep_vm_hours: float = Field(
        24.0,
        gt=0,
        description='hours a vm kept after its run (a request\'s "keep_vm": true) lives '
        "before it is destroyed; other runs' vms are destroyed when the run ends",
    )

    gateway_max_connections: int = Field(
        32, ge=1, description="open LLM-gateway connections per sandbox; more get a 503"
    )
    gateway_max_body: int = Field(
        32 * 2**20, ge=1024, description="largest request body a sandbox may send the gateway"
    )
    gateway_header_timeout: float = Field(
        30.0, gt=0, description="seconds a sandbox has to send a whole request head"
    )
    gateway_body_timeout: float = Field(
        60.0, gt=0, description="seconds without a request-body byte before the gateway drops it"
    )
    gateway_idle_timeout: float = Field(
        120.0, gt=0, description="seconds an idle keep-alive gateway connection is kept"
    )
    # Agent sessions (docs/sessions.md): the vm actor reads these where it makes a
    # vm's session manager.
    session_idle_timeout: float = Field(
        900.0, gt=0, description="seconds without a prompt before a session is closed"
    )
    prestart_agents: str = Field(
        "coding-agent",
        description="comma-separated agent types kept pre-started per live vm; '' for none",
    )
    session_line_max_bytes: int = Field(
        2**20, ge=4096, description="longest agent JSON-RPC line; longer ones are dropped"
    )
    session_events_per_second: float = Field(
        200.0, gt=0, description="agent events stored per second per session; excess dropped"
    )
    session_event_bytes_per_second: int = Field(
        2 * 2**20, ge=4096, description="agent event bytes stored per second per session"
    )
    session_events_max_bytes: int = Field(
        64 * 2**20,
        ge=65536,
        description="stored event bytes per session; past it new events are dropped",
    )
    max_sessions_per_vm: int = Field(
        8, ge=1, description="open agent sessions per vm; more get a 429 too_many_sessions"
    )
    max_sessions: int = Field(
        256, ge=1, description="open agent sessions on the host; more get a 429 too_many_sessions"
    )
    session_retention: float = Field(
        7 * 86400.0,
        ge=0,
        description="seconds after which a closed session's event log is compacted to "
        "its transcript (resume/fork still work from it)",
    )
    checkpoints_max_per_vm: int = Field(
        16, ge=1, description="workspace checkpoints kept per vm; the oldest go first"
    )
    checkpoints_max_bytes: int = Field(
        10 * 1024**3,
        ge=1,
        description="compressed bytes of workspace checkpoints kept per vm; the oldest "
        "go first (the newest always stays)",
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="where vm workspace checkpoints are kept (default: checkpoints/ next to "
        "the SQLite database; with PostgreSQL /var/lib/agentvm/checkpoints, as root); with "
        "several hosts, storage every host reads and writes (e.g. NFS), so a vm whose host "
        "died is re-created from its newest checkpoint",
    )
    checkpoint_timeout: float = Field(
        1800.0,
        gt=0,
        description="seconds a vm checkpoint may take (the sandbox's tar stream) before "
        "it fails and nothing is kept",
    )
    terminal_idle_timeout: float = Field(
        3600.0,
        gt=0,
        description="seconds a vm terminal (WS /vms/{key}/pty) may stay detached before "
        "the sandbox closes it",
    )

    def session_limits(self) -> Any:
        """The :class:`host.sessions.SessionLimits` these settings name."""
        from host.sessions import SessionLimits

        return SessionLimits(
            line_max_bytes=self.session_line_max_bytes,
            events_per_second=self.session_events_per_second,
            event_bytes_per_second=self.session_event_bytes_per_second,
            events_max_bytes=self.session_events_max_bytes,
        )

    def repo_root_list(self) -> list[str]:
        return [r for r in self.repo_roots.split(":") if r.strip()]

    def gateway_limits(self) -> Any:
        """The :class:`host.gateway.GatewayLimits` these settings name."""
        from host.gateway import GatewayLimits

        return GatewayLimits(
            max_connections=self.gateway_max_connections,
            max_body_bytes=self.gateway_max_body,
            header_timeout=self.gateway_header_timeout,
            body_timeout=self.gateway_body_timeout,
            idle_timeout=self.gateway_idle_timeout,
        )


def egress_proxy(settings: HostSettings) -> Any:
    """The egress proxy the settings name (``EgressConfigError`` if one is malformed)."""
    from host.egress import EgressLimits, EgressProxy, load_credentials, parse_ports, parse_resolve

    limits = EgressLimits(
        max_connections=settings.egress_max_connections,
        idle_timeout=settings.egress_idle_timeout,
        ports=parse_ports(settings.egress_ports),
    )
    return EgressProxy(
        resolve=parse_resolve(settings.egress_resolve),
        credentials=load_credentials(settings.git_credentials),
        limits=limits,
    )


def default_host_id(db: str) -> str:
    """From the SQLite path (a restart re-adopts its sandboxes); with PostgreSQL one id
    per process, since several hosts share the database (orchestrator/cluster)."""
    if db.startswith(("postgresql://", "postgres://")):
        from orchestrator.cluster import default_cluster_host_id

        return default_cluster_host_id()
    return "h" + hashlib.sha256(os.path.abspath(db).encode()).hexdigest()[:10]


def build_registry(manager: Any | None = None, settings: HostSettings | None = None) -> Registry:
    """The vm actor (when a sandbox manager is given) and the built-in orchestrators,
    which read host repositories only under ``settings.repo_roots``."""
    from orchestrator.builtin import RepoPolicy, builtin_orchestrators

    settings = settings or HostSettings()
    actors = dict(
        builtin_orchestrators(
            RepoPolicy(roots=settings.repo_root_list()), keep_vm_hours=settings.keep_vm_hours
        )
    )
    if manager is not None:
        from .vm import vm_actor

        actors["vm"] = vm_actor(manager)
    return Registry(actors)


@asynccontextmanager
async def host_runtime(
    config: EngineConfig | None = None,
    settings: HostSettings | None = None,
    *,
    registry: Registry | Callable[[Any], Registry] | None = None,
) -> AsyncIterator[Engine]:
    """Run the whole host; yields the started engine. ``registry`` replaces the
    built-in one (a Registry, or a function of the sandbox manager)."""
    from host.gateway import LLMGateway
    from host.sandbox import SandboxLimits

    from .vm import SandboxManager, VmOptions

    config = config or EngineConfig()
    settings = settings or HostSettings()
    # The sandbox manager's labels and the engine's leases name the same host.
    host_id = settings.host_id or config.host_id or default_host_id(config.db)
    config = config.model_copy(update={"host_id": host_id})
    egress = egress_proxy(settings)
    engine_ref: list[Engine] = []

    def on_usage(record: Any) -> None:
        # Token usage as a live event of the vm whose agent made the request.
        if engine_ref:
            engine_ref[0].broadcast(record.sandbox, "llm_usage", record.model_dump(mode="json"))

    gateway = LLMGateway.from_env(on_usage=on_usage, limits=settings.gateway_limits())
    manager = None
    try:
        manager = await SandboxManager.open(
            host_id=host_id,
            pool_size=settings.warm_pool,
            cold_pool=settings.cold_pool if settings.warm_pool else 0,
            defaults=VmOptions(
                bundles=settings.vm_bundles,
                idle_timeout=settings.vm_idle_timeout,
                limits=SandboxLimits(disk_mb=settings.vm_disk_mb),
            ),
            reap_interval=settings.reap_interval,
            gateway=gateway,
            egress=egress,
            disk_dir=settings.disk_dir,
        )
        if registry is None:
            reg = build_registry(manager, settings)
        elif isinstance(registry, Registry):
            reg = registry
        else:
            reg = registry(manager)
        engine = Engine(reg, config=config)
        engine_ref.append(engine)
        _register_sandbox_gauge(manager)
        async with engine:
            manager.attach(engine)
            if engine.cluster is not None:  # the load placement reads (orchestrator/cluster)
                engine.cluster.load_sources.append(lambda: {"sandboxes": manager.vms_running()})
            yield engine
    finally:
        REGISTRY.unregister(SANDBOX_GAUGE)
        if manager is not None:
            await manager.close(remove_pool=True)
        await gateway.close()
        await egress.close()


SANDBOX_GAUGE = "agentvm_sandboxes_running"


def _register_sandbox_gauge(manager: Any) -> None:
    """``/metrics``: sandboxes with a live connection, of vms and in the warm pool."""

    def running() -> list[tuple[dict[str, str], float]]:
        return [
            ({"kind": "vm"}, manager.vms_running()),
            ({"kind": "warm_pool"}, manager.pool_ready()),
        ]

    REGISTRY.unregister(SANDBOX_GAUGE)
    REGISTRY.gauge(SANDBOX_GAUGE, "Running sandboxes: of vm actors, and warm in the pool.", running)
