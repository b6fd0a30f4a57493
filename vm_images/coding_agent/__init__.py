"""The agentvm coding agent: an ACP agent (JSON-RPC over stdio) that runs inside a
sandbox and calls the model over the Anthropic Messages API.

Run it as ``python3 -m coding_agent`` (in the image the package is top-level). It
uses only the standard library (ACP's JSON-RPC and the Messages API's HTTP stream
are small: ``rpc.py``, ``model.py``); it never imports ``host`` or ``orchestrator``.
See docs/agents.md for its configuration, tools and ACP support.
"""

__version__ = "0.1.0"
NAME = "agentvm-coding-agent"
TITLE = "agentvm coding agent"
