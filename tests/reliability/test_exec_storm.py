"""500 concurrent ``exec`` calls across 20 vms over HTTP against a live host: every
one answers 200 with the right output (no 5xx, nothing lost); p50/p99 are reported.

``EXEC_STORM_N`` (default 500) and ``EXEC_STORM_VMS`` (default 20) shrink it while
developing; the figures line is printed with ``-s``."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import httpx
import pytest

from tests.reliability.conftest import StartHost, percentile, proc_usage, report

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(900)]

N = int(os.environ.get("EXEC_STORM_N", "500"))
VMS = int(os.environ.get("EXEC_STORM_VMS", "20"))


async def test_500_concurrent_execs_across_20_vms(host: StartHost) -> None:
    server = host()
    keys = [f"storm-{i}" for i in range(VMS)]
    limits = httpx.Limits(max_connections=N + 10, max_keepalive_connections=N + 10)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as http:

        async def exec_(key: str, word: str) -> tuple[int, float, str]:
            started = time.monotonic()
            resp = await http.post(
                f"/actors/vm/{key}/actions/exec", json={"args": [["echo", word]]}
            )
            elapsed = time.monotonic() - started
            if resp.status_code != 200:
                return resp.status_code, elapsed, resp.text[:300]
            return 200, elapsed, resp.json()["output"]["stdout"]

        # Every vm's container is started first, so the storm measures exec, not boot.
        boot_started = time.monotonic()
        warm = await asyncio.gather(*(exec_(k, "up") for k in keys))
        boot_s = time.monotonic() - boot_started
        assert all(code == 200 for code, _, _ in warm), warm
        before = proc_usage(server.proc.pid)

        storm_started = time.monotonic()
        results = await asyncio.gather(*(exec_(keys[i % VMS], f"w{i}") for i in range(N)))
        storm_s = time.monotonic() - storm_started

    codes = Counter(code for code, _, _ in results)
    failures = [(i, r) for i, r in enumerate(results) if r[0] != 200]
    assert not failures, (codes, failures[:5])
    # Each call got its own output back (no mixed-up channels under load).
    assert [out for _, _, out in results] == [f"w{i}\n" for i in range(N)]
    latencies = [elapsed for _, elapsed, _ in results]
    after = proc_usage(server.proc.pid)
    report(
        "exec_storm",
        execs=N,
        vms=VMS,
        status_codes=dict(codes),
        boot_s=round(boot_s, 2),
        wall_s=round(storm_s, 2),
        throughput_per_s=round(N / storm_s, 1),
        p50_ms=round(percentile(latencies, 50) * 1000, 1),
        p99_ms=round(percentile(latencies, 99) * 1000, 1),
        max_ms=round(max(latencies) * 1000, 1),
        host_rss_kb_before=before["rss_kb"],
        host_rss_kb_after=after["rss_kb"],
        host_fds_before=before["fds"],
        host_fds_after=after["fds"],
    )
