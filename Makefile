# Shortcuts; the README's two commands are scripts/run and scripts/test (bash only,
# so a machine without make works too).
.PHONY: run test test-slow bench-quick bench-smoke

run:
	./scripts/run

test:
	./scripts/test

# Long stress runs (kill -9 chaos with 100 kill points, ...).
test-slow:
	UV="$$(./scripts/setup)" && "$$UV" run pytest -q -ra -m slow

bench-quick:
	UV="$$(./scripts/setup)" && "$$UV" run --group bench python bench/engine.py --quick \
		&& "$$UV" run python bench/sandbox.py --quick \
		&& "$$UV" run python bench/sessions.py --quick \
		&& "$$UV" run python bench/http_api.py --quick \
		&& "$$UV" run python bench/runs.py --quick \
		&& "$$UV" run python bench/checkpoints.py --quick \
		&& "$$UV" run python bench/cli.py --quick \
		&& "$$UV" run python bench/cluster.py --quick

# Every benchmark with tiny counts (seconds each): do they all still run?
# (tests/bench/test_smoke.py; the default test run leaves out the two slow ones.)
bench-smoke:
	UV="$$(./scripts/setup)" && "$$UV" run --group bench pytest -q -ra tests/bench -m "slow or not slow"
