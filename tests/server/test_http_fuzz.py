"""Property-based fuzzing of the live server from its own /openapi.json (schemathesis).

Bounded: a fixed number of examples per operation, derandomized, so the run is
reproducible and short (``FUZZ_EXAMPLES`` per operation in the default suite; the
``slow`` tests make up many more). Every check schemathesis runs by default must
hold — above all, no 5xx for any request it can make up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.server.live import LiveServer, start_server

# Per operation: enough for every operation's aimed and unaimed cases in the default
# suite; the slow tests (``pytest -m slow``) make up SLOW_EXAMPLES.
FUZZ_EXAMPLES = 10
SLOW_EXAMPLES = 60
ACTOR_TYPES = ["counter", "worker", "vm", "progress"]
# Every action of the test registry but blob(size), which allocates `size` bytes.
ACTIONS = ["increment", "get_count", "echo", "announce", "concat", "read_file", "write_file"]
ACTIONS += ["readdir", "exec", "get_state"]
QUEUES = ["jobs", "slow", "requests", "parked"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    db: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    # A short wait cap: a fuzzed wait=true on a queue nobody consumes ends quickly.
    live = start_server(db, env={"AGENTVM_MAX_WAIT_MS": "200"})
    yield live
    assert live.stop() == 0


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    # The event stream never ends by itself; it has its own tests.
    return schema.exclude(path_regex=r"/events$")


def _has_body_or_query(operation: schemathesis.APIOperation) -> bool:
    """Whether a caller has more to get wrong than the path: a body or a query."""
    raw = operation.definition.raw
    return "requestBody" in raw or any(p.get("in") == "query" for p in raw.get("parameters", []))


def _fuzz(
    api_schema: schemathesis.BaseSchema,
    mode: schemathesis.GenerationMode,
    examples: int = FUZZ_EXAMPLES,
    *,
    every_operation: bool = True,
) -> int:
    ran = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if not every_operation and not _has_body_or_query(operation):
            continue
        # A workflow definition's JSON Schema cannot say that its dependencies are
        # acyclic, its references known or its name the path's: a schema-valid
        # definition (or params) may still get a 400 naming the field.
        semantic = (
            operation.path.startswith("/workflows/")
            and operation.method.upper() in ("PUT", "POST")
            and not operation.path.endswith("/validate")
        )

        @given(
            case=operation.as_strategy(generation_mode=mode),
            name=st.sampled_from([None, *ACTOR_TYPES]),
            action=st.sampled_from([None, *ACTIONS]),
            queue=st.sampled_from([None, *QUEUES]),
        )
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(
            case: schemathesis.Case, name: str | None, action: str | None, queue: str | None
        ) -> None:
            # Half the time aim at real actor types, actions and queues, so the fuzzed
            # bodies reach the engine and the actors instead of stopping at a 404.
            # A schema-valid body may still not fit that action's parameters (a 400
            # naming them), so the "valid data is accepted" check applies only to
            # requests that were not aimed.
            params = case.path_parameters or {}
            aimed = False
            for field, value in (("name", name), ("action", action), ("queue", queue)):
                if value is not None and field in params:
                    params[field] = value
                    aimed = True
            # check() runs within this iteration: the loop variable is current.
            excluded = [positive_data_acceptance] if aimed or semantic else []  # noqa: B023
            case.call_and_validate(timeout=30, excluded_checks=excluded)

        try:
            check()
        except Unsatisfiable:
            # Nothing invalid to make up (e.g. /healthz: no parameters, no body).
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            continue
        ran += 1
    return ran


def test_fuzz_valid_requests(api_schema: schemathesis.BaseSchema) -> None:
    assert _fuzz(api_schema, schemathesis.GenerationMode.POSITIVE) >= 12


def test_fuzz_invalid_requests(api_schema: schemathesis.BaseSchema) -> None:
    """Invalid bodies and queries. Invalid path parameters are rare finds (any text is
    a path segment: hypothesis rejects hundreds of draws per operation before it
    gives up), so the slow test makes them up for every operation."""
    mode = schemathesis.GenerationMode.NEGATIVE
    assert _fuzz(api_schema, mode, every_operation=False) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_fuzz_many_requests(
    api_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    assert _fuzz(api_schema, mode, SLOW_EXAMPLES) >= 4
