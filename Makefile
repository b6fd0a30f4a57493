# The two commands the README documents:
#   make run   — set up and start agentvm (engine + example actors for now)
#   make test  — set up and run the test suite with lint and type checks
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$$HOME/.local/bin/uv")

.PHONY: setup run test lint typecheck test-slow bench-quick

setup:
	@command -v uv >/dev/null 2>&1 || [ -x "$$HOME/.local/bin/uv" ] || python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
	@$(UV) sync --all-groups --quiet

run: setup
	$(UV) run agentvm serve

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: setup
	$(UV) run mypy

test: setup lint typecheck
	$(UV) run pytest -q

test-slow: setup
	$(UV) run pytest -q -m slow
