"""The agentvm coding agent: an ACP agent (JSON-RPC over stdio) that runs inside a
sandbox and calls the model through the ``anthropic`` SDK.

Run it as ``python3 -m coding_agent`` (in the image the package is top-level). It
uses only the standard library plus ``agent-client-protocol`` and ``anthropic``
(and their dependencies); it never imports ``host`` or ``orchestrator``.
See docs/agents.md for its configuration, tools and ACP support.
"""

__version__ = "0.1.0"
NAME = "agentvm-coding-agent"
TITLE = "agentvm coding agent"
