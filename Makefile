# The two commands the README documents:
#   make run   — set up and start agentvm (Docker engine, sandbox image, engine)
#   make test  — set up and run lint, type checks and the test suite
SHELL := /bin/bash
UV := $(shell ./scripts/ensure-uv)

.PHONY: setup docker image run test lint typecheck test-slow bench-quick

setup:
	@$(UV) sync --all-groups --quiet

docker:
	@./scripts/ensure-docker

image: setup docker
	@$(UV) run agentvm images build common coding-agent

run: image
	$(UV) run agentvm serve

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: setup
	$(UV) run mypy

test: setup lint typecheck docker
	$(UV) run pytest -q -ra
	@echo "--- short slow subset: kill -9 chaos with 20 kill points"
	CRASH_KILLS=20 $(UV) run pytest -q -ra -m slow tests/test_crash_safety.py

# Long stress runs (kill -9 chaos with 100 kill points, ...).
test-slow: setup docker
	$(UV) run pytest -q -ra -m slow

bench-quick: setup docker
	$(UV) run python bench/engine.py --quick
	$(UV) run python bench/sandbox.py --quick
