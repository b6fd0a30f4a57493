"""Runnable examples of agentvm's durable actors and workflows (exercised by ``tests/``)."""
