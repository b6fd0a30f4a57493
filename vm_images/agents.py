"""Agent types: which ACP agent a session runs in the sandbox, and how.

An agent type maps a name to the argv run inside the sandbox (the process speaks
ACP on its stdin/stdout) and the bundles its image needs. Built-in types come from
the ``agents`` field of the bundles in :mod:`vm_images.bundles` (``coding-agent``,
``pi``, ``claude-code``, ``opencode``; their env from ``AGENT_ENV``).
More are added by **configuration**: a TOML or JSON file named by the environment
variable ``AGENTVM_AGENTS`` (or passed as ``config=``), which may also define the
bundles that install them::

    [agents.my-agent]
    command = ["some-acp-agent"]   # linked into /usr/local/bin (see docs/agents.md)
    bundles = ["node", "my-agent"]
    env = { MY_AGENT_TELEMETRY = "0" }
    description = "some ACP agent from npm"

    [bundles.my-agent]
    description = "some ACP agent (npm)"
    npm = ["some-acp-agent@1.2.3"]   # run it with node: add the `node` bundle

``python -m vm_images.agents`` prints the registry as JSON
(``{"coding-agent": {"command": [...], "bundles": [...], ...}}``).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import bundles as B

AGENTS_ENV = "AGENTVM_AGENTS"


@dataclass(frozen=True)
class AgentType:
    name: str
    # argv inside the sandbox; the process speaks ACP (JSON-RPC lines) on stdin/stdout.
    command: tuple[str, ...]
    # Bundles the image needs for it (beside `common` and the supervisor).
    bundles: tuple[str, ...] = ()
    # Extra environment for the agent process (the session's env is merged over it).
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    # "builtin" or the path of the configuration file that defined it.
    source: str = "builtin"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"], data["bundles"], data["env"] = (
            list(self.command),
            list(self.bundles),
            dict(self.env),
        )
        return data


class AgentConfigError(ValueError):
    """The agents configuration file is malformed."""


def builtin_agents() -> dict[str, AgentType]:
    out: dict[str, AgentType] = {}
    for bundle in B.BUNDLES.values():
        for name, argv in bundle.agents.items():
            out[name] = AgentType(
                name=name,
                command=tuple(argv),
                bundles=(*B.NEEDS.get(bundle.name, ()), bundle.name),
                env=dict(B.AGENT_ENV.get(name, {})),
                description=bundle.description,
            )
    return out


def config_path(config: str | os.PathLike[str] | None = None) -> Path | None:
    raw = config if config is not None else os.environ.get(AGENTS_ENV)
    return Path(raw).expanduser() if raw else None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise AgentConfigError(f"{AGENTS_ENV}: cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AgentConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AgentConfigError(f"{path}: expected a table/object at the top level")
    unknown = set(data) - {"agents", "bundles"}
    if unknown:
        raise AgentConfigError(f"{path}: unknown sections {sorted(unknown)}")
    return data


def _strings(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AgentConfigError(f"{path}: {where} must be a list of strings")
    return tuple(value)


def _bundle(path: Path, name: str, spec: Any) -> B.Bundle:
    if not isinstance(spec, dict):
        raise AgentConfigError(f"{path}: bundles.{name} must be a table")
    allowed = {"description", "apt", "pip", "npm", "dockerfile"}
    if set(spec) - allowed:
        raise AgentConfigError(
            f"{path}: bundles.{name}: unknown keys {sorted(set(spec) - allowed)} "
            f"(allowed: {sorted(allowed)})"
        )
    pip = _strings(path, f"bundles.{name}.pip", spec.get("pip", []))
    npm = _strings(path, f"bundles.{name}.npm", spec.get("npm", []))
    dockerfile = str(spec.get("dockerfile", ""))
    if pip:
        dockerfile = B.install_wheels(name) + dockerfile
    if npm:
        dockerfile = B.install_npm(name) + dockerfile
    return B.Bundle(
        name=name,
        description=str(spec.get("description", f"{name} (from {path})")),
        apt=_strings(path, f"bundles.{name}.apt", spec.get("apt", [])),
        pip=pip,
        npm=npm,
        dockerfile=dockerfile,
    )


def _agent(path: Path, name: str, spec: Any) -> AgentType:
    if not isinstance(spec, dict):
        raise AgentConfigError(f"{path}: agents.{name} must be a table")
    command = spec.get("command")
    if isinstance(command, str):
        command = [command]
    argv = _strings(path, f"agents.{name}.command", command)
    if not argv:
        raise AgentConfigError(f"{path}: agents.{name}.command is empty")
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise AgentConfigError(f"{path}: agents.{name}.env must map names to strings")
    return AgentType(
        name=name,
        command=argv,
        bundles=_strings(path, f"agents.{name}.bundles", spec.get("bundles", [])),
        env=dict(env),
        description=str(spec.get("description", "")),
        source=str(path),
    )


def load_config(path: Path) -> tuple[dict[str, AgentType], list[B.Bundle]]:
    """Parse a configuration file (not registering anything)."""
    data = _read(path)
    sections = data.get("bundles", {}), data.get("agents", {})
    if not all(isinstance(s, dict) for s in sections):
        raise AgentConfigError(f"{path}: [bundles] and [agents] must be tables")
    bundles = [_bundle(path, name, spec) for name, spec in sections[0].items()]
    agents = {name: _agent(path, name, spec) for name, spec in sections[1].items()}
    return agents, bundles


def agent_types(config: str | os.PathLike[str] | None = None) -> dict[str, AgentType]:
    """Every agent type: built-in, then those of the configuration file (which win).

    Bundles the file defines are registered in :data:`vm_images.bundles.BUNDLES`, so
    ``ensure_image([...agent.bundles])`` can build them. Each agent's bundles must
    exist."""
    agents = builtin_agents()
    path = config_path(config)
    if path is not None:
        extra, bundles = load_config(path)
        for bundle in bundles:
            B.register(bundle)
        agents.update(extra)
    for agent in agents.values():
        missing = [b for b in agent.bundles if b not in B.BUNDLES]
        if missing:
            raise AgentConfigError(
                f"agent type {agent.name!r} ({agent.source}) needs unknown bundle(s) {missing}"
            )
    return agents


def get_agent(agent_type: str, config: str | os.PathLike[str] | None = None) -> AgentType:
    """The agent type, or ``KeyError`` naming the known ones."""
    agents = agent_types(config)
    try:
        return agents[agent_type]
    except KeyError:
        raise KeyError(
            f"unknown agent type {agent_type!r}; known: {', '.join(sorted(agents))}"
        ) from None


def agent_command(agent_type: str, config: str | os.PathLike[str] | None = None) -> list[str]:
    return list(get_agent(agent_type, config).command)


def registry_json(config: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    return {name: a.to_json() for name, a in sorted(agent_types(config).items())}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(registry_json(args[0] if args else None), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "AGENTS_ENV",
    "AgentConfigError",
    "AgentType",
    "agent_command",
    "agent_types",
    "builtin_agents",
    "get_agent",
    "load_config",
    "registry_json",
]
