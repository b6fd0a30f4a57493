"""The configuration table of ``docs/config.md``, generated from the settings classes.

Every ``AGENTVM_*`` variable is a field of one of the pydantic-settings classes
below; ``python -m host.config_doc`` rewrites the table, and
``tests/test_config_doc.py`` fails when the document is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
BEGIN = "<!-- BEGIN GENERATED: python -m host.config_doc -->"
END = "<!-- END GENERATED -->"


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    from host.app import HostSettings
    from host.server.settings import ServerSettings
    from orchestrator.config import EngineConfig

    return [
        ("engine", EngineConfig),
        ("server", ServerSettings),
        ("host", HostSettings),
    ]


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value, default=str)}`"


def table() -> str:
    rows = ["| variable | default | part | what |", "| --- | --- | --- | --- |"]
    seen: set[str] = set()
    for part, cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            env = (prefix + name).upper()
            if env in seen:
                continue
            seen.add(env)
            what = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{env}` | {_default(field)} | {part} | {what} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` with the part between the markers replaced by the current table."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}{END}{tail}"


def main() -> int:
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
