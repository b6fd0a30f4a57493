"""PostgreSQL for the benchmarks: one server, fresh databases, the settings both sides use.

The server comes from ``--pg-url`` (an existing server; the benches create and drop
their own databases on it) or is started from the machine's binaries by
``tests.support.postgres.start_server()`` (``initdb`` + ``pg_ctl`` in a temporary
directory, a free port; the same helper the tests use). When neither works the
caller gets ``None`` and a note for its JSON line, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# The server settings that decide what a commit costs; reported next to the figures.
SETTINGS = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "shared_buffers")


@dataclass
class PgServer:
    """A PostgreSQL server the bench may create databases on."""

    admin_url: str
    started_here: bool
    # Set on every database this bench creates (ALTER DATABASE ... SET), e.g.
    # {"synchronous_commit": "off"}: both systems then run with it.
    db_settings: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    started: Any = None  # tests.support.postgres.PgServer when this process started it

    def database(self, prefix: str) -> str:
        """Create a fresh, empty database and return its URL."""
        name = f"{prefix}_{time.time_ns()}"
        with _connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            for key, value in self.db_settings.items():
                conn.execute(f"ALTER DATABASE \"{name}\" SET {key} = '{value}'")
        self.created.append(name)
        return _with_dbname(self.admin_url, name)


def _with_dbname(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = re.sub(r"(//[^/]*)(/[^/]*)?$", rf"\1/{name}", base)
    return f"{base}?{query}" if query else base


@contextlib.contextmanager
def _connect(url: str) -> Iterator[Any]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def server_settings(url: str) -> dict[str, str]:
    """The settings in :data:`SETTINGS` as the server reports them."""
    with _connect(url) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in SETTINGS}


@contextlib.contextmanager
def pg_server(url: str | None) -> Iterator[tuple[PgServer | None, str | None]]:
    """Yield ``(server, None)``, or ``(None, note)`` saying why there is no server."""
    stop: Any = None
    try:
        if url:
            server = PgServer(admin_url=url, started_here=False)
            server_settings(url)  # reachable?
        else:
            try:
                from tests.support.postgres import start_server
            except ImportError as exc:
                yield None, f"no PostgreSQL helper (tests.support.postgres): {exc}"
                return
            try:
                started = start_server()
            except Exception as exc:  # no binaries, no permission, ...
                yield None, f"could not start PostgreSQL: {type(exc).__name__}: {exc}"
                return
            stop = started.stop
            server = PgServer(admin_url=started.url("postgres"), started_here=True, started=started)
    except Exception as exc:
        yield None, f"PostgreSQL at --pg-url unreachable: {type(exc).__name__}: {exc}"
        return
    try:
        yield server, None
    finally:
        if stop is not None:
            stop()
        else:  # someone else's server: leave it as we found it
            with contextlib.suppress(Exception), _connect(server.admin_url) as conn:
                for name in server.created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def agentvm_has_postgres() -> str | None:
    """None when agentvm can run on PostgreSQL here, else why not."""
    import orchestrator.storage as storage

    if not hasattr(storage, "open_store"):
        return "agentvm has no PostgreSQL store in this checkout (orchestrator.storage.open_store)"
    return None


async def _commit_us(url: str, n: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (x int)")
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute("INSERT INTO bench_commit VALUES ($1)", i)  # one commit each
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        await conn.close()


def commit_us(server: PgServer, n: int = 200) -> float:
    """The floor: microseconds per one-row INSERT committed alone (asyncpg, autocommit)
    on this server right now - what one durable commit costs under the current load."""
    import asyncio

    return asyncio.run(_commit_us(server.database("commit"), n))


async def interleaved_steps(
    bench: Any, av_url: str, dbos_url: str, n: int, rounds: int, log: Any
) -> dict[str, list[float]]:
    """Per-step overhead of agentvm, DBOS async and DBOS sync, in alternating rounds in
    one process (µs/step per round): on a machine whose disk and cores others share,
    the two sides then see the same conditions, a few seconds apart at most."""
    from orchestrator import Engine

    defs = bench._DbosDefs()
    DBOS = defs.DBOS
    DBOS(config=bench.dbos_config(dbos_url))
    DBOS.launch()
    out: dict[str, list[float]] = {"agentvm": [], "async": [], "sync": []}
    try:
        async with Engine(bench.agentvm_registry(), db=av_url, sleep_timeout=None) as eng:
            client = eng.client()

            async def ours(count: int, tag: str) -> None:
                fut = bench.AV.expect(tag)
                await client.steps.get_or_create(tag, input={"n": count, "tag": tag}).resolve()
                await fut
                await eng.store.flush()  # the completion record is durable too

            for r in range(-1, rounds):  # r == -1: warm-up
                count = 50 if r < 0 else n
                for label, run in (
                    ("agentvm", lambda k, r=r: ours(k, f"steps-{r}")),
                    ("async", lambda k: defs.steps_async(k)),
                    ("sync", lambda k: asyncio.to_thread(defs.steps_sync, k)),
                ):
                    t0 = time.perf_counter()
                    await run(count)
                    us = (time.perf_counter() - t0) / count * 1e6
                    if r >= 0:
                        out[label].append(us)
                if r >= 0:
                    log(
                        f"round {r}: agentvm {out['agentvm'][-1]:.0f}, DBOS async "
                        f"{out['async'][-1]:.0f}, sync {out['sync'][-1]:.0f} us/step"
                    )
    finally:
        DBOS.destroy(destroy_registry=True)
    return out


def compare(
    server: PgServer,
    *,
    bench: Any,
    agentvm_steps: Any,
    agentvm_queue: Any,
    dbos_in_process: Any,
    n_steps: int,
    n_msgs: int,
    n_dbos_msgs: int,
    repeat: int,
    log: Any,
) -> dict[str, Any]:
    """agentvm and DBOS on one server, fresh databases each: the ``pg_*`` figures.

    The callables are ``bench/engine.py``'s SQLite-side measurements, given a database
    URL instead of a file (agentvm's ``Engine(db=...)`` and DBOS's
    ``system_database_url`` both take one), so both stores are timed by the same code.
    """
    import asyncio
    import statistics

    probe = server.database("settings")  # the settings a fresh database gets
    res: dict[str, Any] = {"pg_settings": server_settings(probe)}
    log(f"PostgreSQL settings (both sides): {res['pg_settings']}")
    why = agentvm_has_postgres()
    # The disk's flush time moves with the machine's load: the floor is measured next to
    # each side's steps, so a ratio can be read against it.
    n_floor = min(200, n_steps)
    if why is None:
        res["pg_commit_us"] = commit_us(server, n_floor)
        rounds = max(3, repeat)
        log(f"PostgreSQL: {n_steps} no-op steps, agentvm and DBOS in {rounds} alternating rounds")
        steps = asyncio.run(
            interleaved_steps(
                bench,
                server.database("av_steps"),
                server.database("dbos_steps"),
                n_steps,
                rounds,
                log,
            )
        )
        res["pg_step_overhead_us"] = statistics.median(steps["agentvm"])
        res["pg_dbos_step_overhead_us_async"] = statistics.median(steps["async"])
        res["pg_dbos_step_overhead_us_sync"] = statistics.median(steps["sync"])
        # Per round, against DBOS's faster path of that round: neighbours in time.
        res["pg_step_overhead_ratio_rounds"] = [
            round(min(a, b) / o, 2)
            for o, a, b in zip(steps["agentvm"], steps["async"], steps["sync"], strict=True)
        ]
        log(f"PostgreSQL: agentvm queue drain, {n_msgs} messages, one consumer")
        rate, send = asyncio.run(agentvm_queue(server.database("av_queue"), "NORMAL", n_msgs))
        res["pg_queue_throughput"], res["pg_send_per_s"] = rate, send
        res["pg_queue_msgs"] = n_msgs
    else:
        res["pg_note"] = why
        log(f"PostgreSQL: agentvm side skipped: {why}")
    log(f"PostgreSQL: DBOS, {n_dbos_msgs} queued messages")
    if why is not None:  # no agentvm side: DBOS's steps alone
        dbos = asyncio.run(
            dbos_in_process(server.database("dbos"), "NORMAL", n_steps, n_dbos_msgs, repeat)
        )
        res["pg_dbos_step_overhead_us_async"] = dbos["dbos_step_us_async"]
        res["pg_dbos_step_overhead_us_sync"] = dbos["dbos_step_us_sync"]
    else:
        dbos = asyncio.run(dbos_in_process(server.database("dbos"), "NORMAL", 0, n_dbos_msgs, 0))
    res["pg_dbos_settings"] = dbos.get("dbos_pg_settings")
    # The faster of DBOS's two paths, as on SQLite: the ratio never flatters us.
    res["pg_dbos_step_overhead_us"] = min(
        res["pg_dbos_step_overhead_us_async"], res["pg_dbos_step_overhead_us_sync"]
    )
    res["pg_dbos_queue_throughput"] = dbos["dbos_queue_msgs_per_s"]
    res["pg_dbos_enqueue_per_s"] = dbos["dbos_enqueue_per_s"]
    res["pg_dbos_queue_msgs"] = n_dbos_msgs
    if "pg_step_overhead_us" in res:
        res["pg_step_overhead_ratio"] = res["pg_dbos_step_overhead_us"] / res["pg_step_overhead_us"]
        res["pg_queue_throughput_ratio"] = (
            res["pg_queue_throughput"] / res["pg_dbos_queue_throughput"]
        )
    return res
