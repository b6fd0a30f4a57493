"""The engine's compact JSON encoder, with the hot path of a durable step cut short.

Equal, character for character, to
``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode``: a step's
output and the actor's state are encoded on every step, and ``encode`` re-enters
two Python frames and builds a C encoder on each call. Scalars (a step returning
``None``, a string or an int is common) skip all of it; containers call one C
encoder made with the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _enc
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_encode = _ENCODER.encode
# What encode() uses for strings when ensure_ascii is off.
_encode_str: Callable[[str], str] = _enc.encode_basestring
_make: Any = getattr(_enc, "c_make_encoder", None)  # absent without the C speedups


def dumps(value: Any) -> str:
    """``value`` as compact JSON (non-ASCII kept); TypeError/ValueError as json's."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if _make is not None and (kind is dict or kind is list):
        # What encode() does for a container, without its two Python frames.
        return "".join(
            _make(
                {},
                _ENCODER.default,
                _encode_str,
                None,
                ":",
                ",",
                False,
                False,
                True,
            )(value, 0)
        )
    return _encode(value)
