"""Actor keys: a string or a list of strings, normalised to a tuple of strings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote, unquote

from .errors import InvalidRequest

ActorKey = tuple[str, ...]
KeyLike = str | Sequence[str]


def normalize_key(key: KeyLike) -> ActorKey:
    """``"main"`` and ``["main"]`` name the same actor."""
    if isinstance(key, str):
        return (key,)
    if isinstance(key, (list, tuple)):
        if not all(isinstance(part, str) for part in key):
            raise InvalidRequest("an actor key must be a string or a list of strings", field="key")
        return tuple(key)
    raise InvalidRequest("an actor key must be a string or a list of strings", field="key")


def key_to_json(key: ActorKey) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def key_from_json(text: str) -> ActorKey:
    return tuple(json.loads(text))


def encode_key_path(key: ActorKey) -> str:
    """Key as it appears in a URL path: parts joined by ``,``, each percent-encoded."""
    return ",".join(quote(part, safe="") for part in key)


def decode_key_path(text: str) -> ActorKey:
    if text == "":
        raise InvalidRequest("an actor key in a path must not be empty", field="key")
    return tuple(unquote(part) for part in text.split(","))
