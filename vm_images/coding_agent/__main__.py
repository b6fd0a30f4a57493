"""``python3 -m coding_agent``: serve ACP on stdin/stdout until stdin closes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,  # stdout carries the protocol
        level=os.environ.get("AGENTVM_AGENT_LOG", "WARNING").upper(),
        format="coding-agent %(levelname)s %(name)s: %(message)s",
    )
    from .agent import serve

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
