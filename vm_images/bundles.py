"""Software bundles: named units of software that go into a sandbox image.

A vm declares the bundles it needs; the image for a bundle set is built once and
tagged by a hash of everything that goes into it (see ``builder``). A bundle
contributes Debian packages (installed into the base rootfs, the only step that
uses the network), files copied into the build context, wheels downloaded on the
host, and Dockerfile lines that run with no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bundle:
    name: str
    description: str
    # Debian bookworm packages, installed when the base rootfs is made.
    apt: tuple[str, ...] = ()
    # Host paths (relative to vm_images/) copied into the build context as
    # ``<bundle name>/<path>``; their contents are part of the image hash.
    files: tuple[str, ...] = ()
    # pip requirement specifiers; wheels are downloaded on the host into
    # ``<bundle name>/wheels/`` so the build itself needs no network.
    pip: tuple[str, ...] = ()
    # npm package specs; installed on the host (``npm install --prefix``, so the host
    # needs npm) into ``<bundle name>/npm/`` and copied in by ``install_npm``.
    npm: tuple[str, ...] = ()
    # Dockerfile lines run as root after the user exists (no network access).
    dockerfile: str = ""
    # ACP agent types this bundle provides: agent type -> command (sessions issue).
    agents: dict[str, list[str]] = field(default_factory=dict)


def install_wheels(bundle_name: str) -> str:
    """Dockerfile lines unpacking a bundle's downloaded wheels into the system site
    directory (no pip needed in the image; console scripts are not generated, so run
    such tools with ``python3 -m``)."""
    src = f"/tmp/wheels-{bundle_name}"
    return (
        f"COPY {bundle_name}/wheels {src}\n"
        f'RUN for w in {src}/*.whl; do python3 -m zipfile -e "$w" {SITE}/; done'
        f" && rm -rf {src}\n"
    )


SITE = "/usr/local/lib/python3.11/dist-packages"
# The interpreter session agents run with (execute-only: see CODING_AGENT).
AGENT_PYTHON = "/usr/local/bin/agentvm-python3"
NPM_ROOT = "/opt/agentvm/npm"


def install_npm(bundle_name: str) -> str:
    """Dockerfile lines copying a bundle's host-installed npm tree into the image and
    linking its executables into /usr/local/bin (the bundle needs the ``nodejs`` apt
    package to run them)."""
    dest = f"{NPM_ROOT}/{bundle_name}"
    return (
        f"COPY {bundle_name}/npm {dest}\n"
        f'RUN for f in {dest}/node_modules/.bin/*; do [ -e "$f" ] || continue; '
        f'ln -sf "$(readlink -f "$f")" "/usr/local/bin/$(basename "$f")"; done\n'
    )


COMMON = Bundle(
    name="common",
    description="shell and everyday tools for agents",
    apt=(
        "bash", "coreutils", "git", "curl", "ca-certificates", "python3", "ripgrep", "jq",
        "patch", "diffutils", "findutils", "sed", "grep", "tar", "gzip", "procps",
    ),
)  # fmt: skip

SUPERVISOR = Bundle(
    name="supervisor",
    description="the in-sandbox supervisor (PID 1): exec, processes, files",
    apt=("python3", "tar"),
    files=("supervisor",),
    # Installed as a top-level package on the system path so `python3 -I -m` finds it.
    dockerfile=(
        "COPY supervisor/supervisor /usr/lib/python3/dist-packages/agentvm_supervisor\n"
        "RUN find /usr/lib/python3/dist-packages/agentvm_supervisor -name '__pycache__' "
        "-prune -exec rm -rf {} + && python3 -m compileall -q "
        "/usr/lib/python3/dist-packages/agentvm_supervisor\n"
    ),
)

# The ACP coding agent (vm_images/coding_agent, docs/agents.md): its source as the
# top-level package `coding_agent`, its dependencies as wheels fetched on the host
# (pinned: the image hash covers this list, not the wheels), everything byte-compiled
# at build time because the root filesystem is read-only at run time.
CODING_AGENT = Bundle(
    name="coding-agent",
    description="the ACP coding agent (anthropic SDK; bash/read/write/edit/glob/grep)",
    apt=("python3", "bash", "ripgrep"),
    files=("coding_agent",),
    pip=("agent-client-protocol==0.12.1", "anthropic==2.12.0"),
    dockerfile=(
        install_wheels("coding-agent")
        + f"COPY coding-agent/coding_agent {SITE}/coding_agent\n"
        + f"RUN python3 -m compileall -q -j 0 {SITE} >/dev/null\n"
        # An execute-only (root-owned, 0111) copy of the interpreter: the kernel makes
        # a process non-dumpable at execve when its binary is unreadable to it, so
        # other sandbox code (same uid) cannot open /proc/<agent>/fd/*, read its
        # memory or ptrace it (docs/sessions.md, "Agent stdio").
        + f'RUN cp "$(readlink -f /usr/bin/python3)" {AGENT_PYTHON}'
        + f" && chown root:root {AGENT_PYTHON} && chmod 0111 {AGENT_PYTHON}\n"
    ),
    # -I: the session's cwd (a user repo) must not shadow the agent's modules.
    agents={"coding-agent": [AGENT_PYTHON, "-I", "-m", "coding_agent"]},
)

BUNDLES: dict[str, Bundle] = {b.name: b for b in (COMMON, SUPERVISOR, CODING_AGENT)}

# Every image carries the supervisor; it is what the host talks to.
ALWAYS = ("supervisor",)
DEFAULT = ("common",)


def register(bundle: Bundle) -> None:
    BUNDLES[bundle.name] = bundle


def resolve(names: tuple[str, ...] | list[str] | None = None) -> list[Bundle]:
    """The bundles of a set, supervisor included, in a stable order."""
    wanted = sorted(set(ALWAYS) | set(names if names is not None else DEFAULT))
    unknown = [n for n in wanted if n not in BUNDLES]
    if unknown:
        raise KeyError(f"unknown bundle(s): {', '.join(unknown)}; known: {', '.join(BUNDLES)}")
    return [BUNDLES[n] for n in wanted]
