"""A throwaway PostgreSQL server for the tests and the benches.

Started from the machine's own binaries (``initdb`` + ``pg_ctl``; Debian's
``postgresql`` package, which ``scripts/setup`` installs), in a temporary directory,
on a free loopback port, with trust auth. Durability settings stay at their defaults
(``fsync`` and ``synchronous_commit`` on): the ``kill -9`` crash tests rely on them.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
user (or ``nobody``) through ``setpriv``; clients connect over TCP loopback.

``start_server()`` is a plain function (the benches import it); the pytest fixtures
are ``pg_server`` (session), ``pg_url`` (a fresh database per test) and
``store_kind`` (``"sqlite"`` / ``"postgresql"``).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

USER = "agentvm"
# Empties every table of the store but schema_migrations (whatever migrations added).
_TRUNCATE = """
SET lock_timeout = '10s';
DO $$
DECLARE names text;
BEGIN
    SELECT string_agg(format('%I', tablename), ', ') INTO names
    FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations';
    IF names IS NOT NULL THEN
        EXECUTE 'TRUNCATE ' || names;
    END IF;
END $$;
"""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine (run scripts/setup)."""


def pg_bindir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise PostgresUnavailable("no initdb found: install PostgreSQL (scripts/setup does)")


def available() -> bool:
    try:
        pg_bindir()
    except PostgresUnavailable:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[list[str], int, int] | None:
    """The ``setpriv`` prefix (and uid, gid) to drop root, or None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
        return prefix, pw.pw_uid, pw.pw_gid
    raise PostgresUnavailable("running as root and no unprivileged user to run PostgreSQL as")


@dataclass
class PgServer:
    """A running server; ``url()`` names a database on it."""

    base_dir: Path
    port: int
    bindir: Path
    prefix: list[str]
    owns_dir: bool = True
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False
    _shared: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(self.bindir / "psql") if (self.bindir / "psql").exists() else "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL (a fresh name when None)."""
        if name is None:
            with self._lock:
                name = f"t_{os.getpid()}_{next(self._counter)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def acreate_database(self, name: str | None = None) -> str:
        import asyncio

        return await asyncio.to_thread(self.create_database, name)

    def store_url(self) -> str:
        """A migrated, empty agentvm database, shared by tests one after another: each
        call empties it with one TRUNCATE, far cheaper than CREATE DATABASE plus the
        migrations (each costs an fsync'd commit). Not for tests that run concurrently
        or leave an engine open."""
        with self._lock:
            if self._shared is None:
                url = self.create_database(f"agentvm_shared_{os.getpid()}")
                _migrate(url)
                self._shared = url
            self.psql(_TRUNCATE, dbname=self._shared.rsplit("/", 1)[1])
            return self._shared

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # An immediate shutdown is SIGQUIT to the postmaster (pg_ctl -w polls slowly).
        pid = 0
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            pass
        deadline = time.monotonic() + 30
        while pid and time.monotonic() < deadline and _running(pid):
            time.sleep(0.02)
        if self.owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.base_dir / "server.log").read_text().splitlines()[-n:])
        except OSError:
            return ""


def start_server(base_dir: Path | None = None, *, max_connections: int = 300) -> PgServer:
    """initdb + pg_ctl start in ``base_dir`` (a fresh temp dir when None)."""
    bindir = pg_bindir()
    drop = _run_as()
    prefix: list[str] = drop[0] if drop else []
    owns = base_dir is None
    if base_dir is None:
        base_dir = Path(tempfile.mkdtemp(prefix="agentvm-pg-"))
    base_dir.mkdir(parents=True, exist_ok=True)
    if drop:
        # The unprivileged user must own the directory (and reach it).
        os.chown(base_dir, drop[1], drop[2])
        base_dir.chmod(0o755)
    data = base_dir / "data"
    cmd = [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER]
    init = subprocess.run(
        [*cmd, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    last = ""
    for _ in range(5):  # a free port may be taken between probe and bind: retry
        port = _free_port()
        opts = (
            f"-p {port} -k {base_dir} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={max_connections}"
        )
        cmd = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts]
        started = subprocess.run(
            [*cmd, "-l", str(base_dir / "server.log"), "-w", "-t", "60", "start"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        if started.returncode == 0:
            server = PgServer(base_dir, port, bindir, prefix, owns)
            atexit.register(server.stop)
            _wait_ready(server)
            return server
        last = started.stderr.strip() + "\n" + (base_dir / "server.log").read_text()[-2000:]
    raise RuntimeError(f"pg_ctl start failed: {last}")


class SyncConnection:
    """A blocking, sqlite3-shaped connection to PostgreSQL for test harnesses that read
    the database after the fact: ``execute(sql, params)`` with ``?`` placeholders,
    returning rows as tuples (``fetchall``/``fetchone``/iteration)."""

    def __init__(self, url: str) -> None:
        import asyncio

        import asyncpg

        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(asyncpg.connect(url))

    def execute(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> _Rows:
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        rows = self._loop.run_until_complete(self._conn.fetch(numbered, *params))
        return _Rows([tuple(r) for r in rows])

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


class _Rows(list[tuple[object, ...]]):
    def fetchall(self) -> list[tuple[object, ...]]:
        return list(self)

    def fetchone(self) -> tuple[object, ...] | None:
        return self[0] if self else None


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _migrate(url: str) -> None:
    """Apply the store's migrations to ``url`` (opening a store does)."""
    import asyncio

    from orchestrator.storage import PostgresStore

    async def run() -> None:
        store = PostgresStore(url, pool_size=1)
        await store.open()
        await store.close()

    with ThreadPoolExecutor(1) as pool:  # callable from inside a running event loop
        pool.submit(asyncio.run, run()).result()


def _wait_ready(server: PgServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.psql("SELECT 1")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- pytest fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if not available():
        pytest.skip("PostgreSQL binaries not installed (run scripts/setup)")
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database for this test."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
