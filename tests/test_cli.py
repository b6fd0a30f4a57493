"""The agentvm command line, run as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from examples.workflows import simple_invoice
from orchestrator import Engine
from tests.support import eventually


def _agentvm(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, timeout=60, **kw
    )


async def test_history_prints_the_workflow_tree(db_path):
    async with Engine(simple_invoice(), db=db_path) as engine:
        h = engine.client().invoice.get_or_create("main")
        await h.resolve()
        await eventually(
            lambda: h.history(), lambda hist: hist.workflow_status == "completed", what="workflow"
        )
    res = _agentvm("history", "invoice", "main", "--db", db_path)
    assert res.returncode == 0, res.stderr
    for name in ("load-subtotal", "calculate-tax", "save-invoice"):
        assert name in res.stdout
    assert "completed" in res.stdout
    as_json = _agentvm("history", "invoice", "main", "--db", db_path, "--json")
    assert '"workflow_status": "completed"' in as_json.stdout
    missing = _agentvm("history", "invoice", "nobody", "--db", db_path)
    assert missing.returncode != 0
    assert "no actor" in missing.stderr


def test_serve_starts_and_stops_on_sigint(tmp_path):
    db = str(tmp_path / "serve.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "serve", "--db", db, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200", "AGENTVM_WARM_POOL": "0"},
    )
    try:
        deadline = time.monotonic() + 30
        seen = ""
        assert proc.stderr is not None
        while "engine running" not in seen:
            assert time.monotonic() < deadline, seen
            line = proc.stderr.readline()
            assert line, f"serve exited early: {seen}"
            seen += line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert os.path.exists(db)
