"""agentvm's HTTP API side by side with a bare FastAPI echo route, in one server run.

    uv run python bench/http_api.py [--quick|--smoke]

One ``agentvm serve`` subprocess (a fresh SQLite file, ``AGENTVM_BENCH_ROUTES=1``)
serves both:

* **action round trip** — ``POST /actors/bench/main/actions/echo {"args": [...]}``:
  auth/limit/timing middleware, raw-path key decoding, body validation, ``$bytes``
  decoding, argument checking, the engine's action call, ``$bytes`` encoding;
* **bare** — ``POST /_bench/echo`` with the same body, through the same middleware
  and the same JSON handling but no engine: the peer.

``overhead_p50_ms`` is the difference of the two medians: what the actor machinery
adds to a request. They are measured in alternating blocks over one keep-alive
connection (sequential requests), so drift affects both alike. Then **queue send
throughput**: ``POST .../queues/jobs`` (each send is a durable SQLite commit;
a consumer drains the queue), sequential and with 16 requests in flight, and the
action round trip through the Python client (``create_client``).

The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory would come first on sys.path and this
# module would shadow the standard library's `http` package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

ROOT = os.path.dirname(_HERE)
REGISTRY = ("--registry", "bench.http_api:registry")
BODY = {"args": [{"id": 1, "text": "hello", "items": [1, 2, 3]}]}


def registry() -> Any:
    """The server side: ``bench`` echoes, and drains its ``jobs`` queue."""
    from orchestrator import ActorContext, actor, queue, setup

    def echo(c: ActorContext, value: Any) -> Any:
        return value

    async def run(c: ActorContext) -> None:
        async for _ in c.queue.iter():
            pass

    bench = actor(
        actions={"echo": echo},
        queues={"jobs": queue()},
        run=run,
        options={"sleep_timeout": None, "max_queue_length": 100_000},
    )
    return setup(use={"bench": bench})


def _start_server(db: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "AGENTVM_BENCH_ROUTES": "1", "COLUMNS": "300"}
    env.pop("AGENTVM_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "host.cli", "serve", "--db", db, "--port", "0", *REGISTRY],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        m = re.search(r"listening on (http://\S+?)(?:\.? |\.?$)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"server did not start: {seen}")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(http: Any, path: str, body: Any, n: int, out: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        resp = await http.post(path, json=body)
        out.append(time.perf_counter() - t)
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text}")


async def _raw_sends(url: str, path: str, sends: int, in_flight: int) -> float:
    """Sends per second over ``in_flight`` keep-alive connections, one request at a
    time on each, with a minimal HTTP/1.1 client (one write per request, no parsing beyond
    the status and Content-Length). httpx
    spends about twice the server's CPU per request, so with 16 in flight on two
    cores it, not the server, would be the bound (docs/http.md)."""
    host, _, port = url.removeprefix("http://").partition(":")
    head_fmt = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ).encode()
    done = 0

    async def conn(count: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(count):
                body = json.dumps({"body": {"i": done}}).encode()
                writer.write(head_fmt % len(body) + body)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{path}: {head[:80]!r}")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                if b'"queued"' not in await reader.readexactly(length):
                    raise RuntimeError(f"{path}: not queued")
                done += 1
        finally:
            writer.close()

    share = [sends // in_flight + (1 if i < sends % in_flight else 0) for i in range(in_flight)]
    t = time.perf_counter()
    await asyncio.gather(*(conn(k) for k in share if k))
    return sends / (time.perf_counter() - t)


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 where /proc is absent)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    url: str, n: int, sends: int, warm: int = 300, pid: int | None = None
) -> dict[str, Any]:
    import httpx

    from orchestrator import create_client

    action_path = "/actors/bench/main/actions/echo"
    bare_path = "/_bench/echo"
    action: list[float] = []
    bare: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        await http.post("/actors/bench/main")
        warmed: list[float] = []
        await _timed(http, action_path, BODY, warm, warmed)
        await _timed(http, bare_path, BODY, warm, warmed)
        blocks = 20
        for _ in range(blocks):
            await _timed(http, bare_path, BODY, n // blocks, bare)
            await _timed(http, action_path, BODY, n // blocks, action)

        send_path = "/actors/bench/main/queues/jobs"
        t = time.perf_counter()
        for i in range(sends):
            resp = await http.post(send_path, json={"body": {"i": i}})
            if resp.status_code != 200:
                raise RuntimeError(resp.text)
        seq_rate = sends / (time.perf_counter() - t)

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                resp = await http.post(send_path, json={"body": {"i": i}})
                if resp.status_code != 200:
                    raise RuntimeError(resp.text)

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(sends)))
        conc_rate = sends / (time.perf_counter() - t)

    # The server's CPU per send in each phase: with two cores and a CPU-bound server,
    # 16 in flight can only be faster by as much as it saves per send (docs/http.md).
    cpu0 = _cpu_s(pid)
    raw_seq = await _raw_sends(url, send_path, sends, 1)
    cpu1 = _cpu_s(pid)
    raw_16 = await _raw_sends(url, send_path, sends, 16)
    cpu2 = _cpu_s(pid)

    client_samples: list[float] = []
    async with create_client(url) as client:
        handle = client.bench.get_or_create("main")
        value = BODY["args"][0]
        for _ in range(min(200, warm)):
            await handle.echo(value)
        for _ in range(n // 2):
            t = time.perf_counter()
            await handle.echo(value)
            client_samples.append(time.perf_counter() - t)

    ms = 1000.0
    result = {
        "action_p50_ms": round(statistics.median(action) * ms, 3),
        "action_p99_ms": round(_pct(action, 0.99) * ms, 3),
        "bare_p50_ms": round(statistics.median(bare) * ms, 3),
        "bare_p99_ms": round(_pct(bare, 0.99) * ms, 3),
        "client_action_p50_ms": round(statistics.median(client_samples) * ms, 3),
        "queue_send_seq_per_s": round(seq_rate, 1),
        "queue_send_c16_per_s": round(conc_rate, 1),
        # The same sends from a minimal client (see _raw_sends): the server's rates,
        # and how they scale with concurrency (issue 13).
        "send_seq_per_s": round(raw_seq, 1),
        "send_16_per_s": round(raw_16, 1),
        "send_scaling": round(raw_16 / raw_seq, 2),
        "server_cpu_us_per_send_seq": round((cpu1 - cpu0) / sends * 1e6, 1),
        "server_cpu_us_per_send_16": round((cpu2 - cpu1) / sends * 1e6, 1),
        "requests_per_route": len(action),
        "sends": sends,
    }
    result["overhead_p50_ms"] = round(result["action_p50_ms"] - result["bare_p50_ms"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (under a minute)")
    parser.add_argument(
        "--smoke", action="store_true", help="a few requests: does it still run (the test suite)"
    )
    args = parser.parse_args()
    n, sends, warm = (2_000, 1_000, 300) if args.quick else (10_000, 5_000, 300)
    if args.smoke:
        n, sends, warm = 40, 20, 5
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_server(os.path.join(tmp, "bench.db"))
        try:
            result = asyncio.run(measure(url, n, sends, warm, proc.pid))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result.update(
        quick=args.quick,
        smoke=args.smoke,
        python=platform.python_version(),
        cpus=os.cpu_count(),
        target_overhead_p50_ms=0.5,
        target_send_16_per_s=2000,
        target_send_scaling=4.0,
    )
    for label, name in (("action round trip", "action"), ("bare echo route", "bare")):
        p50, p99 = result[f"{name}_p50_ms"], result[f"{name}_p99_ms"]
        print(f"{label:<18} p50 {p50:.3f} ms  p99 {p99:.3f} ms", file=sys.stderr)
    print(f"overhead p50       {result['overhead_p50_ms']:.3f} ms (target < 0.5)", file=sys.stderr)
    print(
        f"queue sends        {result['queue_send_seq_per_s']:.0f}/s sequential, "
        f"{result['queue_send_c16_per_s']:.0f}/s with 16 in flight (httpx); "
        f"{result['send_seq_per_s']:.0f}/s and {result['send_16_per_s']:.0f}/s "
        f"({result['send_scaling']:.2f}x; targets 2000/s, 4x) from a minimal client",
        file=sys.stderr,
    )
    print(
        f"server CPU         {result['server_cpu_us_per_send_seq']:.0f} us per send sequential, "
        f"{result['server_cpu_us_per_send_16']:.0f} us with 16 in flight",
        file=sys.stderr,
    )
    sys.stderr.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
