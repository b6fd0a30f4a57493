"""``dockerd`` dies (``kill -9``) and comes back while three fixBug runs are in flight:
all three resume and complete.

The machine's own Docker engine is never touched: the test starts a **private**
``dockerd`` (own data root, exec root, socket and bridge; no iptables), loads the
vm image into it, and points the host process at it with ``DOCKER_HOST``. Without
``--live-restore`` a restarted engine kills the containers it had, so every agent
connection drops and each run's fix-bug step meets a lost sandbox (retried; the vm
recreates its container on the same ``/home/user`` volume). Needs root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import create_client
from tests.reliability.conftest import FIX_SED, StartHost, fix_request, report
from tests.support import eventually
from tests.support.fake_anthropic import FakeAnthropic, Turn

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(900)]

RUNS = 3


class PrivateDockerd:
    """A dockerd of this test alone, in a short temp dir (unix socket paths are short)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="avd-", dir="/tmp"))
        self.address = f"unix://{self.dir}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "dockerd.log"
        # Its own bridge: with --bridge=none a dockerd deletes the machine's docker0.
        self.bridge = f"avd{os.getpid() % 10**6}"

    def start(self, deadline_s: float = 60.0) -> None:
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", "10.213.77.1/24", "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        cmd = [
            "dockerd",
            f"--data-root={self.dir}/data",
            f"--exec-root={self.dir}/exec",
            f"--pidfile={self.dir}/dockerd.pid",
            f"--host={self.address}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--storage-driver=overlay2",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                client = docker.DockerClient(base_url=self.address, timeout=5)
                client.ping()
                client.close()
                return
            except docker.errors.DockerException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private dockerd did not start: {self.tail()}")
            time.sleep(0.2)

    def kill9(self) -> None:
        """``kill -9`` the engine: dockerd and the containerd it runs (a containerd
        left running keeps its socket and the next dockerd cannot start its own)."""
        assert self.proc is not None
        engine = [p for p in _pids_mentioning(str(self.dir)) if _is_containerd(p)]
        self.proc.kill()
        self.proc.wait(timeout=30)
        for pid in engine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Its pid may linger as an unreaped zombie here (no init reaping orphans), and
        # dockerd would take it for a live containerd; a restarted service starts anew.
        (self.dir / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        """Remove every container (restarting a dead engine for that), stop dockerd,
        end what it left behind, unmount its file systems and delete the dir."""
        if self.proc is not None and self.proc.poll() is not None:
            with contextlib.suppress(AssertionError):
                self.start(deadline_s=30)
        with contextlib.suppress(docker.errors.DockerException):
            client = docker.DockerClient(base_url=self.address, timeout=30)
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # A containerd a killed dockerd left behind: ours alone, found by our paths.
        for pid in _pids_mentioning(str(self.dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.dir))
        ]
        for mount in sorted(mounts, reverse=True):  # the deepest first
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _is_containerd(pid: int) -> bool:
    """The daemon, not a shim (the shims keep the containers; the restart kills them)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"containerd"


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry))
    return pids


@pytest.fixture
def private_dockerd(agent_image: str) -> Iterator[PrivateDockerd]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("a private dockerd needs root and the dockerd binary")
    engine = PrivateDockerd()
    try:
        engine.start()
        # The vm image, copied from the machine's engine (no registry, no rebuild).
        save = subprocess.Popen(["docker", "save", agent_image], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "load"],
            stdin=save.stdout,
            capture_output=True,
            env={**os.environ, "DOCKER_HOST": engine.address},
        )
        assert save.wait() == 0 and load.returncode == 0, load.stderr
        yield engine
    finally:
        engine.stop()


async def test_three_fix_bug_runs_resume_after_dockerd_is_killed_and_restarted(
    private_dockerd: PrivateDockerd,
    host: StartHost,
    fake_model: FakeAnthropic,
    tmp_path: Path,
) -> None:
    from tests.reliability.conftest import make_buggy_repo

    server = host(DOCKER_HOST=private_dockerd.address)
    held = fake_model.gate()  # every first model turn waits until the engine is back
    for i in range(RUNS):
        fake_model.script(Turn.tool("bash", FIX_SED, wait_for=held), marker=f"dockerd-{i}")
        fake_model.script(*[Turn.tool("bash", FIX_SED), Turn.text("Fixed.")] * 4,
                          marker=f"dockerd-{i}")  # fmt: skip
    client = create_client(server.url)
    automators = [client.automator.get_or_create(f"dockerd-{i}") for i in range(RUNS)]
    sent = []
    for i, automator in enumerate(automators):
        repo = make_buggy_repo(tmp_path, f"repo-{i}")
        sent.append(await automator.send("fixBug", fix_request(repo, f"dockerd-{i}", f"dk-{i}")))

    # All three are in their fix-bug step: each agent waits on its first model turn.
    await asyncio.to_thread(fake_model.wait_for_requests, RUNS, 300)
    containers_before = _container_ids(private_dockerd.address)
    assert len(containers_before) >= RUNS, containers_before

    killed_at = time.monotonic()
    await asyncio.to_thread(private_dockerd.kill9)
    await asyncio.to_thread(private_dockerd.start)
    restarted_s = time.monotonic() - killed_at
    held.set()

    async def results() -> list[Any]:
        return [await a.get_result(s.message_id) for a, s in zip(automators, sent, strict=True)]

    done = await eventually(
        results, lambda rs: all(r is not None for r in rs), timeout=600, interval=0.5,
        what="three fixBug results after the dockerd restart",
    )  # fmt: skip
    resumed_s = time.monotonic() - killed_at
    for result in done:
        assert result["tests_exit_code"] == 0, result["test_output"]
        assert "+    return a + b" in result["diff"]
    attempts = []
    for automator in automators:
        history = await automator.history()
        steps = {e.path.rsplit("/", 1)[-1]: e for e in history.entries if e.kind == "step"}
        assert steps["clone-repo"].attempts == 1  # the repo survived on the volume
        attempts.append(steps["fix-bug"].attempts)
    containers_after = _container_ids(private_dockerd.address)
    server.stop()
    report(
        "dockerd_restart",
        runs=RUNS,
        dockerd_down_to_up_s=round(restarted_s, 2),
        kill_to_all_results_s=round(resumed_s, 2),
        fix_bug_attempts=attempts,
        # Restarted in place (same ids, same volumes) or recreated.
        containers_recreated=len(set(containers_before) - set(containers_after)),
    )


def _container_ids(address: str) -> list[str]:
    client = docker.DockerClient(base_url=address, timeout=30)
    try:
        return [c.id for c in client.containers.list()]
    finally:
        client.close()
