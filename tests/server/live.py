"""A live ``agentvm serve`` in a subprocess, for tests (no mocks of the server)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "tests.server.registry:build"
_LISTENING = re.compile(r"listening on (http://\S+?)(?:\.? |\.?$)")


def agentvm(
    *args: str,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args],
        cwd=ROOT,
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


class LiveServer:
    def __init__(self, proc: subprocess.Popen[str], url: str, lines: queue.Queue[str]) -> None:
        self.proc = proc
        self.url = url
        self.lines = lines

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


def start_server(
    db: Path,
    *,
    token: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    deadline_s: float = 60.0,
    registry: str | None = REGISTRY,
) -> LiveServer:
    """Start a server on a free port and wait (polling /healthz) until it answers."""
    full_env = {**os.environ, "COLUMNS": "300", **(env or {})}
    full_env.pop("AGENTVM_TOKEN", None)
    if token:
        full_env["AGENTVM_TOKEN"] = token
    cmd = [sys.executable, "-m", "host.cli", "serve", "--db", str(db), "--port", "0"]
    if registry is not None:  # None: the real host (vm actor, orchestrators, Docker)
        cmd += ["--registry", registry]
    cmd += list(args)
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=full_env)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + deadline_s
    seen = ""
    url = None
    while url is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not report its address: {seen}")
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                raise AssertionError(f"server exited ({proc.returncode}): {seen}") from None
            continue
        seen += line
        m = _LISTENING.search(line)
        if m:
            # A server bound to every interface is still only ever reached on loopback.
            url = m.group(1).replace("://0.0.0.0:", "://127.0.0.1:")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        try:
            if httpx.get(f"{url}/healthz", headers=headers, timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server never became healthy")
        time.sleep(0.05)
    return LiveServer(proc, url, lines)
