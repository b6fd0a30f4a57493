"""Wire and result models of the LLM gateway."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, computed_field


class Usage(BaseModel):
    """Token counts as the Messages API reports them, summed over requests."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    requests: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        """What a budget counts: every input (cached or not) and output token."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.requests += other.requests

    @classmethod
    def from_api(cls, raw: Any) -> Usage:
        """From an API ``usage`` object (missing or null fields count as 0)."""
        if not isinstance(raw, dict):
            return cls()

        def num(name: str) -> int:
            value = raw.get(name)
            return int(value) if isinstance(value, int | float) else 0

        return cls(
            input_tokens=num("input_tokens"),
            output_tokens=num("output_tokens"),
            cache_creation_input_tokens=num("cache_creation_input_tokens"),
            cache_read_input_tokens=num("cache_read_input_tokens"),
        )


class UsageRecord(BaseModel):
    """One model request through the gateway, as handed to ``on_usage``."""

    sandbox: str
    session_id: str | None = None
    model: str | None = None
    path: str
    status: int
    stream: bool = False
    usage: Usage


class UsageReport(BaseModel):
    """Usage of one sandbox: its total, per session, and its budget."""

    sandbox: str
    total: Usage = Field(default_factory=Usage)
    sessions: dict[str, Usage] = Field(default_factory=dict)
    budget_tokens: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def remaining_tokens(self) -> int | None:
        if self.budget_tokens is None:
            return None
        return max(0, self.budget_tokens - self.total.total_tokens)
