"""orchestrator._json.dumps is json's compact encoder, character for character."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest

from orchestrator._json import dumps

_REF = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Color(enum.IntEnum):
    RED = 1


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -17,
    2**70,
    1.5,
    math.inf,
    -math.inf,
    "",
    'héllo "quoted" \n\t\u2028 😀',
    [],
    {},
    [1, "a", None, [2.5, {"k": [True]}]],
    {"n": 1000, "tag": "steps-0", "nested": {"é": ["x", {"": None}]}, "1": 2},
    (1, 2),
    _Color.RED,
    {"t": (1, "x")},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_same_text_as_json(value: Any) -> None:
    assert dumps(value) == _REF(value)


def test_same_errors_as_json() -> None:
    for bad in ({1, 2}, {"k": object()}, [b"bytes"]):
        with pytest.raises(TypeError):
            dumps(bad)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        dumps(loop)
    nan = dumps(math.nan)
    assert nan == _REF(math.nan) == "NaN"
