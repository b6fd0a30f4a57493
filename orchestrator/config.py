"""Engine settings, read from ``AGENTVM_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineConfig(BaseSettings):
    """Every setting has a safe default; override with ``AGENTVM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="AGENTVM_", extra="ignore")

    db: str = Field("./.agentvm/agentvm.db", description="SQLite database file")
    sqlite_synchronous: str = Field(
        "NORMAL",
        description="SQLite synchronous pragma. NORMAL in WAL mode survives a process "
        "crash (kill -9); FULL also survives power loss at some cost per commit.",
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
