"""agentvm package."""
