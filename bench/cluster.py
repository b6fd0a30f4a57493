"""Runs per second through 1, 2 and 3 agentvm hosts on one PostgreSQL (issue 14).

    uv run python bench/cluster.py [--quick|--smoke] [--pg-url postgresql://...]

One PostgreSQL server (``--pg-url``, else a throwaway one from the machine's binaries:
bench/_pg.py); the fake model (tests/support/fake_anthropic.py) in a child process,
answering every Messages call after a fixed latency; for each cluster size H in
1, 2, 3: a fresh database and H ``agentvm serve`` processes on it (cluster mode: the
store is PostgreSQL), each with its own host id.

The workload is plain orchestrator actors, no Docker: ``svc/a0 .. svc/a5`` each hold
a run queue (``queue(run=handle, concurrency=8)``) whose handler is a durable
per-message workflow with one step that calls the fake model over HTTP (a minimal
keep-alive client: see ``_model``) and returns its text. Vms are left out on purpose: a vm's cost is
its container (Docker's, one engine per machine), which does not move between hosts
here, so with vms the figure would measure dockerd on two cores, not how the engine
and the lease protocol scale.

The six actors are created through the hosts in turn (placement puts each on the
least-loaded live host); the bench then reads each actor's owner from the ``leases``
table and sends its runs straight to that host (``POST .../queues/jobs`` with
``"wait": true``: the response is the run's result), eight in flight per actor, over
keep-alive connections from a minimal HTTP/1.1 client (httpx would cost the client
more CPU than a host spends). A request sent to another host would be forwarded; that
cost is measured separately as ``forwarded_runs_per_s`` (H=2, every run sent to the
host that does *not* own its actor).

Figures: ``runs_per_s_{1,2,3}``, ``scaling_3_hosts`` = runs_per_s_3 / runs_per_s_1
(target >= 2), ``scaling_ceiling_cpu`` (what the cores allow: cpus x a host's CPU per
run at size 1 / everyone's CPU per run at size 3 - one host is one process, at most
one core), ``actors_per_host_{H}`` (where placement put them) and, to say what
bounds it, CPU seconds per run of each party (``cpu_ms_per_run_{H}``: the hosts,
PostgreSQL's processes, the fake model, this client) next to the machine's cores and
``loadavg``, the share of the machine that was busy (``cpu_busy_share_{H}``), the
cost of one durable commit at the time (``commit_floor_us_{H}``: each host has one
group commit in flight at a time, so when commits are slow a host is bound by them,
not by its CPU) and ``commits_per_run_{H}`` (how much the group commit shares).
On a 2-core machine the whole cluster, its database, the model and the
client share two cores: H hosts cannot go faster than the cores allow.

``--quick``: 600 runs per size; full: 2,000; ``--smoke``: sizes 1 and 3, 12 runs each
(tests/bench/test_smoke.py). ``--profile FILE``: size 1 with the host under cProfile,
the top functions by own time on stderr. The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACTORS = 6
RUN_CONCURRENCY = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
SERVE_PREFIX: list[str] = []  # ["-m", "cProfile", "-o", FILE] with --profile
MODEL_URL_ENV = "BENCH_MODEL_URL"  # the fake model, for the hosts' run handlers


def log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the hosts' registry -------------------------------------------------------------------

_idle: list[Conn] = []  # keep-alive connections to the fake model, per host process


async def _model(prompt: str) -> str:
    """One Messages call to the fake model over a pooled keep-alive connection.

    The minimal client below, not httpx: httpx's connection pool scans every pooled
    connection on each request (``is_idle`` ran 1.2 M times for 650 runs in a profile),
    which made the bench's own model call half of a host's CPU per run."""
    conn = _idle.pop() if _idle else Conn(os.environ[MODEL_URL_ENV])
    body = {
        "model": "claude-bench",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}],
    }
    try:
        status, out = await conn.request("POST", "/v1/messages", body, MODEL_HEADERS)
    except BaseException:
        conn.close()
        raise
    _idle.append(conn)
    if status != 200:
        raise RuntimeError(f"model: {status} {out}")
    return str(out["content"][0]["text"])


MODEL_HEADERS = "x-api-key: bench\r\nanthropic-version: 2023-06-01\r\n"


def registry() -> Any:
    """``svc``: a run queue whose runs each make one durable model call."""
    from orchestrator import actor, queue, setup

    async def handle(ctx: Any, message: Any) -> Any:
        i = message.body["i"]
        text = await ctx.step("model", lambda: _model(f"run {i}"))
        return {"i": i, "text": text}

    svc = actor(
        queues={"jobs": queue(run=handle, concurrency=RUN_CONCURRENCY)},
        options={"sleep_timeout": None, "max_queue_length": 100_000},
    )
    return setup(use={"svc": svc})


# --- processes -----------------------------------------------------------------------------

FAKE = """
import sys
from tests.support.fake_anthropic import FakeAnthropic, Turn
with FakeAnthropic(latency=float(sys.argv[1])) as fake:
    fake.fallback = Turn.text("ok")
    print(fake.url, flush=True)
    sys.stdin.read()
"""


def start_fake(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE, str(latency)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_host(db: str, index: int, model_url: str) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        MODEL_URL_ENV: model_url,
        "AGENTVM_HOST_ID": f"bench-h{index}-{os.getpid()}",
        "COLUMNS": "300",
    }
    for k in ("AGENTVM_TOKEN", "AGENTVM_URL", "AGENTVM_HOST_URL"):
        env.pop(k, None)
    serve_args = ["--db", db, "--port", "0", "--registry", "bench.cluster:registry"]
    proc = subprocess.Popen(
        [sys.executable, *SERVE_PREFIX, "-m", "host.cli", "serve", *serve_args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 90
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        m = re.search(r"listening on (http://\S+?)(?:\.? |\.?$)", line)
        if m:
            _drain(proc)  # so a chatty host never blocks on a full pipe
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"host {index} did not start: {seen[-2000:]}")


def _drain(proc: subprocess.Popen[str]) -> None:
    import threading

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Traceback" in line or "ERROR" in line:
                sys.stderr.write(f"[host {proc.pid}] {line}")

    threading.Thread(target=pump, daemon=True).start()


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- CPU accounting ------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_busy_s() -> float:
    """CPU seconds the machine spent busy since boot (all cores, all processes)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


class CpuMeter:
    """CPU used by each party between ``start()`` and ``stop()``."""

    def __init__(self, hosts: list[int], postmaster: int | None, fake: int) -> None:
        self.parties: dict[str, list[int]] = {"hosts": hosts, "model": [fake]}
        self.postmaster = postmaster
        self.before: dict[int, float] = {}
        self.t0 = 0.0
        self.busy0 = 0.0
        self.self0 = 0.0

    def _pg_pids(self) -> list[int]:
        if self.postmaster is None:
            return []
        return [self.postmaster, *children_of(self.postmaster)]

    def start(self) -> None:
        pids = [p for ps in self.parties.values() for p in ps] + self._pg_pids()
        self.before = {p: proc_cpu_s(p) for p in pids}
        self.t0, self.busy0 = time.monotonic(), cpu_busy_s()
        self.self0 = sum(os.times()[:2])

    def stop(self) -> dict[str, float]:
        parties = dict(self.parties)
        if self.postmaster is not None:
            parties["postgres"] = self._pg_pids()
        out = {
            name: sum(proc_cpu_s(p) - self.before.get(p, 0.0) for p in pids)
            for name, pids in parties.items()
        }
        out["client"] = sum(os.times()[:2]) - self.self0
        out["machine_busy"] = cpu_busy_s() - self.busy0
        out["wall"] = time.monotonic() - self.t0
        return out


def postmaster_pid(server: Any) -> int | None:
    """The server's postmaster (when this bench started it), for its CPU figures."""
    started = getattr(server, "started", None)
    data_dir = getattr(started, "data_dir", None)
    if data_dir is None:
        return None
    try:
        return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- the client ----------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection: one request at a time, minimal parsing."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port.rstrip("/"))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: Any = None, headers: str = ""
    ) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = b"" if body is None else json.dumps(body).encode()
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if m is None:
            raise RuntimeError(f"{path}: no Content-Length in {head[:200]!r}")
        payload = await self.reader.readexactly(int(m.group(1)))
        if re.search(rb"(?i)\r\nconnection: *close", head):
            self.close()
        return status, json.loads(payload) if payload else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def http(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = Conn(url)
    try:
        return await conn.request(method, path, body)
    finally:
        conn.close()


async def wait_cluster(urls: list[str], timeout: float = 60) -> str | None:
    """Until every host's ``/cluster`` lists all of them alive; a note if it cannot."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        status, body = await http(urls[0], "GET", "/cluster")
        if status == 404:
            return "GET /cluster not found (no cluster mode in this checkout?)"
        last = body
        hosts = (body or {}).get("hosts", []) if status == 200 else []
        if sum(1 for h in hosts if h.get("alive")) >= len(urls):
            return None
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the cluster did not see {len(urls)} live hosts: {last}")


async def owners(db: str) -> dict[str, str]:
    """actor id -> the URL of the host holding its lease (from the database)."""
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "SELECT l.actor_id, h.url FROM leases l JOIN hosts h ON h.host_id = l.host_id"
        )
    finally:
        await conn.close()
    return {r["actor_id"]: r["url"].rstrip("/") for r in rows}


async def place(urls: list[str], db: str) -> dict[str, str]:
    """Create the actors through the hosts in turn; actor key -> its owner's URL."""
    ids: dict[str, str] = {}
    for k in range(ACTORS):
        status, body = await http(urls[k % len(urls)], "POST", f"/actors/svc/a{k}")
        if status != 200:
            raise RuntimeError(f"create svc/a{k}: {status} {body}")
        ids[f"a{k}"] = body["actor_id"]
    try:
        found = await owners(db)
    except Exception as exc:  # no leases table: single-host store
        log(f"owners unknown ({type(exc).__name__}: {exc}); sending through host 0")
        return {key: urls[0] for key in ids}
    return {key: found.get(aid, urls[0]) for key, aid in ids.items()}


async def drive(targets: dict[str, str], runs: int, start: int = 0) -> float:
    """``runs`` runs spread over the actors, RUN_CONCURRENCY in flight each; seconds."""
    keys = sorted(targets)
    per_actor = [runs // len(keys) + (1 if i < runs % len(keys) else 0) for i in range(len(keys))]
    counter = iter(range(start, start + runs))
    failures: list[Any] = []

    async def worker(key: str, count: int) -> None:
        conn = Conn(targets[key])
        try:
            for _ in range(count):
                i = next(counter)
                body = {"body": {"i": i}, "wait": True, "timeout_ms": 120_000}
                status, out = await conn.request("POST", f"/actors/svc/{key}/queues/jobs", body)
                if status != 200 or (out or {}).get("status") != "completed":
                    failures.append((key, i, status, out))
                    return
        finally:
            conn.close()

    tasks = []
    for key, n in zip(keys, per_actor, strict=True):
        share = [
            n // RUN_CONCURRENCY + (1 if j < n % RUN_CONCURRENCY else 0)
            for j in range(RUN_CONCURRENCY)
        ]
        tasks += [worker(key, c) for c in share if c]
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} runs failed, e.g. {failures[:3]}")
    return elapsed


async def completed_runs(db: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'completed'"))
    finally:
        await conn.close()


# --- one cluster size ----------------------------------------------------------------------


def start_hosts(db: str, n: int, model_url: str) -> tuple[list[subprocess.Popen[str]], list[str]]:
    """Start ``n`` hosts at once (their imports overlap) and wait for each to listen."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        started = list(pool.map(lambda i: start_host(db, i, model_url), range(n)))
    return [p for p, _ in started], [u for _, u in started]


async def measure_size(
    server: Any, size: int, runs: int, model_url: str, fake_pid: int, forwarded: bool
) -> dict[str, Any]:
    from bench import _pg

    db = server.database(f"cluster_{size}")
    commits0 = await xact_commits(db)
    procs, urls = await asyncio.to_thread(start_hosts, db, size, model_url)
    res: dict[str, Any] = {}
    sent = 0
    try:
        note = await wait_cluster(urls)
        if note:
            res["cluster_note"] = note
        targets = await place(urls, db)
        per_host = [sum(1 for u in targets.values() if u == url) for url in urls]
        res[f"actors_per_host_{size}"] = per_host
        log(f"{size} host(s): actors per host {per_host}; warming up")
        warm = ACTORS * RUN_CONCURRENCY
        await drive(targets, warm)
        # What one durable commit costs on this server right now (the disk's flush time
        # with synchronous_commit=on): each host has one commit in flight at a time.
        res[f"commit_floor_us_{size}"] = await asyncio.to_thread(_pg.commit_us, server, 50)
        meter = CpuMeter([p.pid for p in procs], postmaster_pid(server), fake_pid)
        meter.start()
        elapsed = await drive(targets, runs, start=warm)
        cpu = meter.stop()
        rate = runs / elapsed
        res[f"runs_per_s_{size}"] = rate
        res[f"cpu_ms_per_run_{size}"] = {
            k: round(v / runs * 1000, 3) for k, v in cpu.items() if k != "wall"
        }
        # Busy share of the machine's cores during the phase: near 1.0 = CPU-bound.
        res[f"cpu_busy_share_{size}"] = round(cpu["machine_busy"] / (cpu["wall"] * CPUS), 3)
        log(
            f"{size} host(s): {runs} runs in {elapsed:.2f}s = {rate:.1f} runs/s; CPU ms/run "
            f"{res[f'cpu_ms_per_run_{size}']}; machine busy {res[f'cpu_busy_share_{size}']:.0%}"
        )
        sent = warm + runs
        done = await completed_runs(db)
        if done != warm + runs:
            raise RuntimeError(f"{done} runs completed in the database, expected {warm + runs}")
        if forwarded and size == 2:
            # Every run sent to a host that does not own its actor: forwarded to the owner.
            other = {k: next(u for u in urls if u != owner) for k, owner in targets.items()}
            n = max(ACTORS, runs // 2)
            t = await drive(other, n, start=warm + runs)
            sent += n
            res["forwarded_runs_per_s"] = n / t
            res["forwarded_vs_direct"] = res["forwarded_runs_per_s"] / rate
            log(f"{size} hosts, every run forwarded: {n / t:.1f} runs/s")
    finally:
        await asyncio.to_thread(stop, procs)
    if sent:
        # Transactions per run over the whole phase (heartbeats and leases included):
        # how much the hosts' group commit shares. Read after the hosts exit, when their
        # connections have reported their counts.
        res[f"commits_per_run_{size}"] = (await xact_commits(db) - commits0) / sent
    return res


async def xact_commits(db: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        return int(
            await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="600 runs per size")
    p.add_argument("--smoke", action="store_true", help="sizes 1 and 3, a few runs: still runs?")
    p.add_argument("--runs", type=int, help="runs per cluster size")
    p.add_argument("--latency", type=float, default=0.02, help="the fake model's latency (s)")
    p.add_argument("--pg-url", help="an existing PostgreSQL server (else one is started)")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="one host only, under cProfile: write its stats to FILE and print the top "
        "functions (what a host spends a run's CPU on)",
    )
    args = p.parse_args()
    if args.profile:
        SERVE_PREFIX[:] = ["-m", "cProfile", "-o", os.path.abspath(args.profile)]
    from bench import _pg

    sizes = [1] if args.profile else [1, 3] if args.smoke else [1, 2, 3]
    runs = args.runs or (12 if args.smoke else 600 if args.quick else 2000)
    res: dict[str, Any] = {
        "smoke": args.smoke,
        "quick": args.quick,
        "runs": runs,
        "actors": ACTORS,
        "run_concurrency": RUN_CONCURRENCY,
        "model_latency_s": args.latency,
        "cpus": CPUS,
        "loadavg_start": os.getloadavg()[0],
    }
    t_all = time.time()
    fake, model_url = start_fake(args.latency)
    try:
        with _pg.pg_server(args.pg_url) as (server, note):
            if server is None:
                res["note"] = note
                print(json.dumps(res))
                sys.exit(1)
            res["pg_settings"] = _pg.server_settings(server.admin_url)
            for size in sizes:
                log(f"{size} host(s), {runs} runs")
                res.update(
                    asyncio.run(
                        measure_size(server, size, runs, model_url, fake.pid, not args.smoke)
                    )
                )
    finally:
        if fake.stdin is not None:
            fake.stdin.close()
        try:
            fake.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fake.kill()
    if args.profile:
        import pstats

        pstats.Stats(args.profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))
        return
    res["scaling_3_hosts"] = res["runs_per_s_3"] / res["runs_per_s_1"]
    # What the cores allow: one host is one Python process (at most one core), so
    # runs_per_s_1 <= 1000 / host ms per run; three hosts, the database, the model and
    # the client share every core: runs_per_s_3 <= cpus * 1000 / (their ms per run).
    one, three = res["cpu_ms_per_run_1"], res["cpu_ms_per_run_3"]
    ours = sum(v for k, v in three.items() if k != "machine_busy")
    if ours > 0:  # (meaningful when size 1 was CPU-bound: cpu_busy_share_1 near 1)
        res["scaling_ceiling_cpu"] = min(CPUS, 3) * one["hosts"] / ours
    res["targets"] = {"scaling_3_hosts>=2": res["scaling_3_hosts"] >= 2}
    res["loadavg_end"] = os.getloadavg()[0]
    res["wall_s"] = time.time() - t_all
    log(f"runs/s by size: { {s: round(res[f'runs_per_s_{s}'], 1) for s in sizes} }")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
