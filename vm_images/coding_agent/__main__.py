"""``python3 -m coding_agent``: serve ACP on stdin/stdout until stdin closes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys


def _nondumpable() -> None:
    """Defence in depth: the agent's stdio pipes, memory and ptrace are closed to other
    sandbox processes (same uid) once it is non-dumpable. Its execute-only interpreter
    already does this from execve (vm_images/bundles.py); this covers a plain
    ``python3`` start, from here on."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: nothing to protect against here


PR_SET_DUMPABLE = 4


def main() -> int:
    _nondumpable()
    logging.basicConfig(
        stream=sys.stderr,  # stdout carries the protocol
        level=os.environ.get("AGENTVM_AGENT_LOG", "WARNING").upper(),
        format="coding-agent %(levelname)s %(name)s: %(message)s",
    )
    # Standard library only (agent.py): a pre-started agent idles small and its
    # first prompt loads nothing.
    from .agent import serve

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
