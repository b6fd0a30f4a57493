"""JSON on the wire: ``bytes`` travel as ``{"$bytes": "<base64>"}`` in both directions.

The HTTP server and the HTTP client share this codec, so an action that returns
``bytes`` in-process returns ``bytes`` over HTTP too.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any

from pydantic import BaseModel

from .errors import InvalidRequest

BYTES_KEY = "$bytes"


def to_wire(value: Any) -> Any:
    """``value`` with every ``bytes`` replaced by ``{"$bytes": base64}`` (and pydantic
    models, dataclasses, tuples and sets turned into plain JSON shapes)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_wire(v) for v in value]
    if isinstance(value, BaseModel):
        return to_wire(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_wire(dataclasses.asdict(value))
    return value


def from_wire(value: Any, *, where: str = "body") -> Any:
    """The inverse of :func:`to_wire`: ``{"$bytes": base64}`` objects become ``bytes``.

    A malformed ``$bytes`` value raises :class:`InvalidRequest` naming where it was.
    """
    if isinstance(value, dict):
        if BYTES_KEY in value and len(value) == 1:
            text = value[BYTES_KEY]
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}: $bytes must be a base64 string", field=where)
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequest(
                    f"{where}: $bytes is not valid base64: {exc}", field=where
                ) from exc
        return {k: from_wire(v, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return value
