"""A second Docker engine on this machine, for the cluster tests (issue 14: "several
Docker engines"): its own ``dockerd`` with its own data root, exec root, pid file,
socket and bridge, started once per session and removed (containers, mounts, data
root, bridge) at its end. Images are copied from the machine's engine with
``docker save | docker -H … load`` — no registry, no rebuild.

Flags that work next to the machine's engine: ``--iptables=false`` (the first
engine owns the NAT rules), ``--ip-forward=false``, ``--ip-masq=false`` and a bridge
of its own (``--bridge=none`` would make this dockerd delete the shared ``docker0``).
Containers on it have no route out; none is needed: a vm reaches the model through
the host's LLM gateway, a unix socket in its control directory.

Why not ``testcontainers``: it starts containers *from images* (a ``docker:dind``
container would need a registry image, and a privileged nested engine is not the
deployment we simulate); what we need is a second daemon process on the machine.
It fits nowhere else in the suite either, so it should be dropped from the dev
dependencies.

Needs root and the ``dockerd`` binary (tests skip otherwise)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest


class SecondDockerd:
    """One private ``dockerd`` in a short temp dir (unix socket paths are short)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="avc-", dir="/tmp"))
        self.address = f"unix://{self.dir}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "dockerd.log"
        self.bridge = f"avc{os.getpid() % 10**6}"
        self._loaded: set[str] = set()

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.address, timeout=timeout)

    def start(self, deadline_s: float = 60.0) -> None:
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", "10.213.79.1/24", "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        cmd = [
            "dockerd",
            f"--data-root={self.dir}/data",
            f"--exec-root={self.dir}/exec",
            f"--pidfile={self.dir}/dockerd.pid",
            f"--host={self.address}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--storage-driver=overlay2",
            f"--config-file={self._config()}",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                client = self.client(timeout=5)
                client.ping()
                client.close()
                return
            except docker.errors.DockerException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the second dockerd did not start: {self.tail()}")
            time.sleep(0.2)

    def _config(self) -> Path:
        """Its own identity: Docker 20.10 derives the engine ID (``docker info`` ->
        ``ID``, what a host records with its vms) from a trust key, by default
        /etc/docker/key.json, which would make both engines look like one."""
        path = self.dir / "daemon.json"
        path.write_text(json.dumps({"deprecated-key-path": str(self.dir / "key.json")}))
        return path

    def engine_id(self) -> str:
        client = self.client()
        try:
            return str(client.info()["ID"])
        finally:
            client.close()

    def load(self, tag: str) -> None:
        """Copy image ``tag`` from the machine's engine into this one (once)."""
        if tag in self._loaded:
            return
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "load"],
            stdin=save.stdout,
            capture_output=True,
            env={**os.environ, "DOCKER_HOST": self.address},
        )
        assert save.wait() == 0 and load.returncode == 0, load.stderr
        self._loaded.add(tag)

    def managed_containers(self) -> list[str]:
        """Names of the agentvm containers on this engine (the leak check)."""
        client = self.client()
        try:
            rows = client.containers.list(all=True, filters={"label": "agentvm.managed=1"})
            return [c.name for c in rows]
        finally:
            client.close()

    def stop(self) -> None:
        """Remove every container, stop dockerd, end what it left behind, unmount its
        file systems, delete its directory and its bridge."""
        with contextlib.suppress(docker.errors.DockerException):
            client = self.client(timeout=30)
            for container in client.containers.list(all=True):
                container.remove(force=True)
            for volume in client.volumes.list():
                with contextlib.suppress(docker.errors.DockerException):
                    volume.remove(force=True)
            client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The containerd (and shims) this dockerd started: ours alone, found by our paths.
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
        # Exiting shims may still hold files for a moment: retry until a deadline.
        deadline = time.monotonic() + 30
        while self.dir.exists() and time.monotonic() < deadline:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.dir.exists():
                time.sleep(0.2)
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _pids_mentioning(text: str) -> list[int]:
    """The engine's daemons and shims whose command line names ``text`` (never a
    test process that merely has the path in its arguments)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        binary = os.path.basename(argv[0]) if argv else b""
        if binary.startswith((b"dockerd", b"containerd")) and text.encode() in b" ".join(argv):
            pids.append(int(entry))
    return pids


@pytest.fixture(scope="session")
def second_dockerd() -> Iterator[SecondDockerd]:
    """The session's second engine (images: ``second_dockerd.load(tag)``)."""
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("a second dockerd needs root and the dockerd binary")
    engine = SecondDockerd()
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
