"""codeReview's lenient parsing of findings out of an agent's text."""

from __future__ import annotations

import json

from orchestrator.builtin import parse_findings


def test_a_fenced_json_block_with_findings() -> None:
    finding = {"file": "a.py", "line": 3, "severity": "warning", "text": "x"}
    text = "Looks risky.\n```json\n" + json.dumps({"findings": [finding]}) + "\n```"
    assert parse_findings(text) == [finding]


def test_other_key_names_a_bare_list_and_odd_values_are_taken() -> None:
    text = 'Here: [{"path": "b.py", "line": "12-14", "level": "HIGH", "message": "bad"}, 7]'
    assert parse_findings(text) == [
        {"file": "b.py", "line": 12, "severity": "error", "text": "bad"}
    ]


def test_no_findings_is_none_never_an_error() -> None:
    for text in ("plain prose", "```json\n{broken\n```", '{"findings": []}', "[1, 2]", ""):
        assert parse_findings(text) is None
