"""Soak: fixBug runs back to back (``SOAK_WORKERS`` automators at once, each reusing
its own vm) for ``SOAK_SECONDS`` (default 600) against a live host with the fake
model. The host process's RSS and open file descriptors are sampled every few
seconds; the last third of the samples must stay near the first third (after a
warm-up round), with a generous margin: a leak grows with the number of runs."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import pytest

from orchestrator import create_client
from tests.reliability.conftest import (
    FIX_SED,
    StartHost,
    fix_request,
    make_buggy_repo,
    proc_usage,
    report,
)
from tests.support.fake_anthropic import FakeAnthropic, Turn

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "3"))
SAMPLE_EVERY = 3.0
# Generous: allocator fragmentation and caches may settle a little higher.
RSS_MARGIN_KB = 64 * 1024
RSS_MARGIN_RATIO = 1.25
FD_MARGIN = 16

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(SOAK_SECONDS + 900)]


async def test_soak_fix_bug_runs_keep_host_rss_and_fds_flat(
    host: StartHost, fake_model: FakeAnthropic, tmp_path: Path
) -> None:
    server = host()
    client = create_client(server.url)
    repos = [make_buggy_repo(tmp_path, f"soak-repo-{w}") for w in range(WORKERS)]
    runs = [0] * WORKERS
    durations: list[float] = []

    async def one_run(w: int) -> None:
        marker = f"soak-{w}-{runs[w]}"
        fake_model.script(Turn.tool("bash", FIX_SED), Turn.text("Fixed."), marker=marker)
        started = time.monotonic()
        sent = await client.automator.get_or_create(f"soak-{w}").send(
            "fixBug", fix_request(repos[w], marker, f"soak-vm-{w}"), wait=True, timeout=600
        )
        durations.append(time.monotonic() - started)
        assert sent.status == "completed", sent
        assert sent.response["tests_exit_code"] == 0, sent.response["test_output"]
        runs[w] += 1

    # Warm-up: every worker's vm, image layers and agent code paths are loaded once.
    await asyncio.gather(*(one_run(w) for w in range(WORKERS)))
    baseline = proc_usage(server.proc.pid)

    samples: list[dict[str, float]] = []
    deadline = time.monotonic() + SOAK_SECONDS
    began = time.monotonic()

    async def worker(w: int) -> None:
        while time.monotonic() < deadline:
            await one_run(w)

    async def sampler() -> None:
        while time.monotonic() < deadline:
            usage = proc_usage(server.proc.pid)
            samples.append({"t": round(time.monotonic() - began, 1), **usage})
            await asyncio.sleep(SAMPLE_EVERY)

    await asyncio.gather(sampler(), *(worker(w) for w in range(WORKERS)))
    samples.append({"t": round(time.monotonic() - began, 1), **proc_usage(server.proc.pid)})

    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    rss_first = statistics.mean(s["rss_kb"] for s in first)
    rss_last = statistics.mean(s["rss_kb"] for s in last)
    fds_first = statistics.mean(s["fds"] for s in first)
    fds_last = statistics.mean(s["fds"] for s in last)
    total_runs = sum(runs)
    report(
        "soak",
        seconds=SOAK_SECONDS,
        workers=WORKERS,
        runs=total_runs,
        run_p50_s=round(statistics.median(durations), 2),
        run_max_s=round(max(durations), 2),
        samples=len(samples),
        rss_kb_baseline=baseline["rss_kb"],
        rss_kb_first_third=round(rss_first),
        rss_kb_last_third=round(rss_last),
        rss_kb_max=max(s["rss_kb"] for s in samples),
        fds_baseline=baseline["fds"],
        fds_first_third=round(fds_first, 1),
        fds_last_third=round(fds_last, 1),
        fds_max=max(s["fds"] for s in samples),
    )
    assert rss_last <= rss_first * RSS_MARGIN_RATIO + RSS_MARGIN_KB, (rss_first, rss_last)
    assert fds_last <= fds_first + FD_MARGIN, (fds_first, fds_last)
