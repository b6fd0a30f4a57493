"""The host's database on a full disk: a live server whose ``--db`` lives on a small
tmpfs the test mounts and fills. Calls that must write answer a clear error (a JSON
error with a message, never a bare 500), nothing acknowledged is lost and nothing
refused is half-written; once space returns the same server works again and the
file passes ``PRAGMA integrity_check``.

Needs root (``mount -t tmpfs``); skipped otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import report
from tests.server.live import start_server
from tests.support import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FS_SIZE = "8m"
CALLS = 30


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        # Lazy: a server still shutting down may hold the file for a moment.
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; return the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]  # fill the last few blocks too


def _error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert isinstance(body.get("error"), dict), (resp.status_code, resp.text)
    error: dict[str, Any] = body["error"]
    return error


async def test_database_disk_full_gives_a_clear_error_and_recovers(
    small_fs: Path, tmp_path: Path
) -> None:
    db = small_fs / "host.db"
    server = start_server(db)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            # A healthy start: a counter with a few acknowledged increments.
            for _ in range(3):
                assert (await http.post("/actors/counter/c/actions/increment")).status_code == 200
            filler = small_fs / "filler"
            filled = fill(filler)

            # Disk full: increments, new actors and queue sends all need a commit.
            statuses: Counter[int] = Counter()
            errors: list[dict[str, Any]] = []
            acked = 3
            full_started = time.monotonic()
            for i in range(CALLS):
                calls = [
                    http.post("/actors/counter/c/actions/increment"),
                    http.post(f"/actors/counter/new-{i}"),
                    http.post("/actors/counter/c/queues/jobs", json={"body": {"i": i}}),
                ]
                for j, call in enumerate(calls):
                    resp = await call
                    statuses[resp.status_code] += 1
                    if resp.status_code == 200:
                        acked += j == 0
                        continue
                    error = _error_of(resp)
                    errors.append({"status": resp.status_code, **error})
            full_s = time.monotonic() - full_started
            assert errors, "nothing failed on a full disk: the filler did not fill it"
            for error in errors:
                # A caller learns what happened: storage is full, not "internal error".
                assert error["status"] in (503, 507), error
                text = (error.get("code", "") + " " + error.get("message", "")).lower()
                assert "full" in text or "space" in text, error

            # Space returns: the same server works again, without a restart.
            filler.unlink()
            recovered_started = time.monotonic()
            await eventually(
                lambda: http.post("/actors/counter/c/actions/increment"),
                lambda r: r.status_code == 200,
                timeout=60,
                interval=0.2,
                what="an increment after space returned",
            )
            acked += 1
            recovery_s = time.monotonic() - recovered_started
            created = await http.post("/actors/counter/after-full")
            assert created.status_code == 200, created.text
            count = (await http.post("/actors/counter/c/actions/get_count")).json()["output"]
            # Every acknowledged increment counts, and no refused one does.
            assert count == acked, (count, acked)
            health = await http.get("/healthz")
            assert health.status_code == 200
    finally:
        code = server.stop()
    assert code == 0, "".join(_drain(server.lines))

    # The file on disk: intact, and it holds what the server acknowledged.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    restarted = start_server(db)
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=30) as http:
            resp = await http.post("/actors/counter/c/actions/get_count")
        assert resp.json()["output"] == acked
    finally:
        restarted.stop()
    report(
        "db_disk_full",
        fs_size=FS_SIZE,
        filler_bytes=filled,
        calls_while_full=3 * CALLS,
        statuses=dict(statuses),
        first_error=errors[0],
        seconds_while_full=round(full_s, 2),
        recovery_s=round(recovery_s, 2),
        restart_needed=False,
    )


def _drain(lines: Any) -> list[str]:
    out = []
    while not lines.empty():
        out.append(lines.get_nowait())
    return out[-50:]
