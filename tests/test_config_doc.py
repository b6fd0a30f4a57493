"""docs/config.md's table is the settings classes' fields, every one described."""

from __future__ import annotations

from host.config_doc import DOC, render, settings_classes


def test_config_doc_is_up_to_date() -> None:
    text = DOC.read_text()
    assert render(text) == text, "docs/config.md is stale: run `uv run python -m host.config_doc`"


def test_every_setting_has_a_description() -> None:
    missing = [
        f"{cls.__name__}.{name}"
        for _, cls in settings_classes()
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert not missing, f"settings without a description: {missing}"
