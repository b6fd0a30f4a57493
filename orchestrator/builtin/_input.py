"""Validating the bodies of orchestrator requests."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: Any) -> M:
    """``model`` from a message body, or :class:`InvalidRequest` naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise InvalidRequest(f"{field}: {first.get('msg')}", field=field) from exc
