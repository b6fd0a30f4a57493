"""Real ``agentvm serve`` hosts on one test PostgreSQL database, for the cluster tests."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.server.live import LiveServer, start_server

REGISTRY = "tests.cluster.registry:build"
TOKEN = "cluster-test-token"
FORWARDED = "x-agentvm-forwarded"
T = TypeVar("T")


@dataclass
class Host:
    name: str
    server: LiveServer
    seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout
        )

    def log(self) -> str:
        """Everything the host wrote to stderr so far."""
        while not self.server.lines.empty():
            self.seen.append(self.server.lines.get_nowait())
        return "".join(self.seen)

    def kill(self) -> None:
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(timeout=30)

    def pause(self) -> None:
        self.server.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.server.proc.send_signal(signal.SIGCONT)


@dataclass
class Files:
    effects: Path
    marks: Path
    gate: Path

    def lines(self, which: str) -> list[list[str]]:
        path = getattr(self, which)
        if not path.exists():
            return []
        return [ln.split() for ln in path.read_text().splitlines() if ln.strip()]


def files(tmp: Path) -> Files:
    return Files(tmp / "effects.txt", tmp / "marks.txt", tmp / "gate")


def start_hosts(db_url: str, names: list[str], tmp: Path, ttl: float = 2.0) -> list[Host]:
    """Start the hosts at once (each in a thread: start-up is mostly imports)."""
    f = files(tmp)

    def one(name: str) -> Host:
        env = {
            "AGENTVM_HOST_ID": name,
            "AGENTVM_LEASE_TTL": str(ttl),
            "AGENTVM_SLEEP_TIMEOUT": "300",
            "CLUSTER_EFFECTS": str(f.effects),
            "CLUSTER_MARKS": str(f.marks),
            "CLUSTER_GATE": str(f.gate),
        }
        server = start_server(db_url, token=TOKEN, env=env, registry=REGISTRY)  # type: ignore[arg-type]
        return Host(name, server)

    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(one, name) for name in names]
    hosts = [fut.result() for fut in futures if fut.exception() is None]
    if len(hosts) < len(names):
        stop_hosts(hosts)
        raise next(e for fut in futures if (e := fut.exception()) is not None)
    return hosts


def stop_hosts(hosts: list[Host]) -> None:
    for h in hosts:
        if h.server.proc.poll() is None:
            h.resume()  # a paused host cannot handle SIGINT
    with ThreadPoolExecutor(max(1, len(hosts))) as pool:
        list(pool.map(lambda h: h.server.stop(), hosts))


def wait_for(
    probe: Callable[[], T],
    pred: Callable[[T], bool] = bool,
    *,
    timeout: float = 30.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``pred`` holds (a deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if pred(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {value!r}")
        time.sleep(0.05)


def cluster_view(host: Host) -> dict[str, Any]:
    with host.http() as c:
        r = c.get("/cluster")
        r.raise_for_status()
        view: dict[str, Any] = r.json()
        return view


def all_alive(hosts: list[Host]) -> None:
    """Wait until every host sees every other one alive (they have heartbeaten)."""
    names = {h.name for h in hosts}
    for h in hosts:
        wait_for(
            lambda h=h: {x["host_id"] for x in cluster_view(h)["hosts"] if x["alive"]},  # type: ignore[misc]
            lambda alive: names <= alive,
            what=f"{h.name} sees every host",
        )


def lease_owner(db_url: str, actor_id: str) -> str | None:
    """The host holding ``actor_id``'s lease, read straight from PostgreSQL."""
    import asyncio

    import asyncpg

    async def q() -> str | None:
        conn = await asyncpg.connect(db_url)
        try:
            row = await conn.fetchval("SELECT host_id FROM leases WHERE actor_id = $1", actor_id)
            return str(row) if row is not None else None
        finally:
            await conn.close()

    return asyncio.run(q())
