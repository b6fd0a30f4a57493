"""Engine settings, read from ``AGENTVM_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineConfig(BaseSettings):
    """Every setting has a safe default; override with ``AGENTVM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="AGENTVM_", extra="ignore")

    db: str = Field(
        "./.agentvm/agentvm.db",
        description="the store: a SQLite database file, or a PostgreSQL URL "
        "(postgresql://user@host:port/dbname) for several hosts sharing one database",
    )
    sqlite_synchronous: str = Field(
        "NORMAL",
        description="SQLite synchronous pragma. NORMAL in WAL mode survives a process "
        "crash (kill -9); FULL also survives power loss at some cost per commit.",
    )
    pg_pool_size: int = Field(
        10,
        ge=1,
        description="with PostgreSQL: connections per host for reads and leases (the group "
        "commit has one more of its own)",
    )
    sleep_timeout: float | None = Field(
        30.0, description="upper bound on seconds an idle actor stays in memory"
    )
    max_queue_length: int = Field(1000, ge=1, description="pending messages per actor")
    max_message_size: int = Field(64 * 1024, ge=1, description="bytes of JSON per message")
    run_concurrency: int = Field(
        4,
        ge=1,
        description="default for queue(run=..., concurrency=None): runs of one queue "
        "executing at once per actor",
    )
    run_history_keep: int = Field(
        1000,
        ge=0,
        description="finished runs per actor whose workflow history is kept for get_run "
        "(older runs keep their record, input, result and error)",
    )
    # Cluster mode (several hosts on one PostgreSQL database; orchestrator/cluster).
    lease_ttl: float = Field(
        10.0,
        gt=0,
        description="with PostgreSQL: seconds an actor's lease lasts without renewal; hosts "
        "heartbeat every third of it, and a dead host's actors are taken over after it",
    )
    host_url: str | None = Field(
        None,
        description="with PostgreSQL: the URL other hosts reach this host's HTTP server at "
        "(requests for its actors are forwarded there); default the address it listens on",
    )
    host_id: str | None = Field(
        None,
        description="this host's id: labels its containers and, with PostgreSQL, owns its "
        "leases; default derived from the SQLite path (a restart re-adopts its sandboxes), "
        "or with PostgreSQL <hostname>-<random> per process (set it to a stable value to "
        "re-own the leases at once after a restart)",
    )
