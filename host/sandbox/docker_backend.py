"""Sandboxes as hardened Docker containers (docker SDK calls run in threads)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import DriverConfig, Mount

from vm_images.supervisor import protocol as P

from .backend import (
    LABEL_HOST,
    LABEL_KEY,
    LABEL_MANAGED,
    LABEL_POOL,
    LABEL_VOLUME,
    SandboxBackend,
)
from .control import ControlServer
from .disk import LoopDisks, default_disk_dir, unavailable_reason
from .errors import DockerUnavailable, SandboxError, SandboxNotFound
from .models import SandboxInfo, SandboxSpec
from .sandbox import Sandbox

T = TypeVar("T")
log = logging.getLogger("agentvm.sandbox")

HOME = "/home/user"
# Threads for blocking Docker SDK calls. Their own pool, not asyncio's default one
# (min(32, cpus + 4) threads: 6 on a 2-core host), which the gateway's per-connection
# peer checks and the exec cgroup moves also use: 8 vms created or destroyed at once
# (each call blocks its thread for the engine's whole answer, a container start
# ~0.3-0.7 s) must neither wait for each other nor stall those.
DOCKER_THREADS = 16
# CPU weight (cgroup cpu shares) of a warm-pool container until a vm takes it, and
# then: the pool pre-starts agents in its containers (~1-3 s of CPU each), which
# must only use CPU the running vms leave idle.
POOL_CPU_SHARES = 2
CPU_SHARES = 1024  # Docker's default
UID = 1000  # the image's `user` (images/Dockerfile.agent)
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def default_control_root() -> Path:
    """Short paths: a unix socket path must stay under 108 bytes."""
    if os.geteuid() == 0:
        return Path("/run/agentvm")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "agentvm"
    return Path(tempfile.gettempdir()) / f"agentvm-{os.geteuid()}"


def volume_labels(labels: dict[str, str]) -> dict[str, str]:
    return {k: labels[k] for k in (LABEL_MANAGED, LABEL_HOST, LABEL_KEY) if k in labels}


def hardened_config(
    spec: SandboxSpec,
    *,
    name: str,
    volume: str,
    control_dir: Path,
    token: str,
    labels: dict[str, str],
    disk: dict[str, str] | None = None,
    cpu_shares: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: every hardening measure in one place
    (docs/security.md lists them and the tests that check each). ``cpu_shares``
    overrides the weight the spec implies (a pool's idle weight, else Docker's)."""
    limits = spec.limits
    if cpu_shares is None:
        cpu_shares = POOL_CPU_SHARES if spec.pool else CPU_SHARES
    return {
        "image": spec.image,
        "name": name,
        "hostname": "sandbox",
        "user": "user",
        "working_dir": HOME,
        "environment": {**spec.env, P.TOKEN_ENV: token},
        "labels": labels,
        "detach": True,
        "cap_drop": ["ALL"],
        # Default seccomp profile stays on (never "seccomp=unconfined").
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": limits.pids,
        "mem_limit": f"{limits.memory_mb}m",
        "memswap_limit": f"{limits.memory_mb}m",  # no swap beyond the memory limit
        "nano_cpus": int(limits.cpus * 1e9),
        "cpu_shares": cpu_shares,
        "read_only": True,
        # Owned by the sandbox user: some kernels apply dockerd's umask to mode=1777.
        "tmpfs": {
            "/tmp": f"rw,nosuid,nodev,exec,size={limits.tmp_mb}m,uid={UID},gid={UID},mode=1777",
            # Hide the host's block devices: each loop device's backing_file names
            # another vm's disk image (host id, volume) under /var/lib/agentvm/disks.
            "/sys/block": "ro,size=4k,mode=0555",
            "/sys/devices/virtual/block": "ro,size=4k,mode=0555",
        },
        "mounts": [
            # Docker creates the volume on first use (one API call less), labelled
            # so the orphan reaper finds it, and seeds it from the image's /home/user.
            # With a disk (``disk``: local-driver options, host/sandbox/disk.py) the
            # volume is a size-limited ext4 file system: the kernel enforces the quota.
            Mount(
                HOME,
                volume,
                type="volume",
                labels=volume_labels(labels),
                driver_config=DriverConfig("local", disk) if disk else None,
            ),
            # Only the per-sandbox control directory, read-only: the socket lives there.
            Mount(P.CONTAINER_CONTROL_DIR, str(control_dir), type="bind", read_only=True),
        ],
        "network_mode": spec.network,
        "ipc_mode": "private",
        "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
        "log_config": docker.types.LogConfig(
            type="json-file", config={"max-size": "1m", "max-file": "1"}
        ),
    }


class DockerBackend(SandboxBackend):
    """Create with :meth:`connect` (raises :class:`DockerUnavailable` naming the engine)."""

    def __init__(
        self,
        client: docker.DockerClient,
        host_id: str,
        *,
        control_root: Path | None = None,
        connect_timeout: float = 30.0,
        disk_dir: Path | None = None,
        disk_quota: bool = True,
    ) -> None:
        if not _HOST_ID.match(host_id):
            raise ValueError(f"host id must match {_HOST_ID.pattern}: {host_id!r}")
        self.client = client
        self.host_id = host_id
        # The Docker engine's id (``docker info`` -> ID; set by :meth:`connect`): a vm
        # records it, so a host of another machine knows the container is not here.
        self.engine_id = ""
        self.control_root = (control_root or default_control_root()) / host_id
        self.connect_timeout = connect_timeout
        self._sandboxes: dict[str, Sandbox] = {}
        self._executor = ThreadPoolExecutor(DOCKER_THREADS, thread_name_prefix="docker")
        # Size-limited /home/user (one loop-mounted ext4 image per volume), or None:
        # plain named volumes without a size limit (disk_quota_off says why).
        self.disks: LoopDisks | None = None
        self.disk_quota_off: str | None = "turned off (disk_quota=False)"
        if disk_quota:
            root = disk_dir or default_disk_dir()
            self.disk_quota_off = unavailable_reason(root)
            if self.disk_quota_off is None:
                # One directory per host id: the reaper only ever sees its own disks.
                self.disks = LoopDisks(root / host_id)
            else:
                log.warning(
                    "disk quotas unavailable: %s; /home/user volumes have NO size limit",
                    self.disk_quota_off,
                )

    @classmethod
    async def connect(
        cls, host_id: str, *, docker_host: str | None = None, **kwargs: Any
    ) -> DockerBackend:
        """``docker_host``: the engine's address (default ``DOCKER_HOST``, else the
        local socket)."""
        address = docker_host or engine_address()
        try:
            # As many pooled engine connections as threads (urllib3 would discard
            # the extra ones, with a warning each time).
            if docker_host:
                client = docker.DockerClient(base_url=docker_host, max_pool_size=DOCKER_THREADS)
            else:
                client = await asyncio.to_thread(docker.from_env, max_pool_size=DOCKER_THREADS)
            info = await asyncio.to_thread(client.info)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(address, str(exc).splitlines()[0][:200]) from exc
        backend = cls(client, host_id, **kwargs)
        backend.engine_id = str(info.get("ID") or "")
        return backend

    async def _docker(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a thread, mapping engine failures to our errors."""
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound(str(exc.explanation or exc)) from exc
        except requests.exceptions.ConnectionError as exc:
            raise DockerUnavailable(engine_address(), type(exc).__name__) from exc
        except docker.errors.APIError as exc:
            raise SandboxError(f"Docker engine: {exc.explanation or exc}") from exc

    # -- create / adopt -------------------------------------------------------

    def _labels(self, spec: SandboxSpec, volume: str) -> dict[str, str]:
        return {
            **spec.labels,
            LABEL_MANAGED: "1",
            LABEL_HOST: self.host_id,
            LABEL_KEY: json.dumps(spec.key),
            LABEL_POOL: spec.pool or "",
            LABEL_VOLUME: volume,
        }

    def new_name(self) -> str:
        """A fresh container name for this host (pass it to :meth:`create`)."""
        return f"agentvm-{self.host_id}-{secrets.token_hex(5)}"

    async def create(
        self,
        spec: SandboxSpec,
        *,
        start: bool = True,
        name: str | None = None,
        volume: str | None = None,
        cpu_shares: int | None = None,
    ) -> Sandbox:
        """A new container (started unless ``start=False``: then :meth:`start` it
        later; everything decided at create time, volume and disk included, is done)."""
        name = name or self.new_name()
        # An existing ``volume`` (a vm recreated after its container vanished) is
        # mounted as it is and survives a failed create; a new one is ours to clean.
        keep_volume = volume is not None
        volume = volume or f"{name}-home"
        token = secrets.token_urlsafe(24)
        labels = self._labels(spec, volume)
        control = ControlServer(self.control_root / name, token)
        await control.start()  # listen before the supervisor can dial
        container = None
        try:
            # Before the container: Docker mounts the volume at create already, to
            # copy the image's /home/user into it.
            disk = await self._prepare_disk(spec, volume, existing=keep_volume)
            config = hardened_config(
                spec,
                name=name,
                volume=volume,
                control_dir=control.control_dir,
                token=token,
                labels=labels,
                disk=disk,
                cpu_shares=cpu_shares,
            )
            container = await self._docker(self.client.containers.create, **config)
            sandbox = Sandbox(
                self,
                id=container.id,
                name=name,
                volume=volume,
                control=control,
                key=spec.key,
                connect_timeout=self.connect_timeout,
            )
            self._sandboxes[container.id] = sandbox
            if start:
                await self.start(sandbox)
            return sandbox
        except BaseException:
            # Leave nothing half-created behind.
            self._sandboxes.pop(getattr(container, "id", ""), None)
            await asyncio.shield(self._cleanup(name, None if keep_volume else volume, control))
            raise

    async def _prepare_disk(
        self, spec: SandboxSpec, volume: str, *, existing: bool
    ) -> dict[str, str] | None:
        """The volume's disk, created or re-attached; None for a plain volume (no
        quota here, or an existing volume made before quotas: it is kept as it is)."""
        if self.disks is None:
            return None
        if self.disks.exists(volume):
            await self.disks.attach(volume)
        elif existing and await self._volume_exists(volume):
            log.warning("volume %s predates disk quotas: mounted without a size limit", volume)
            return None
        else:
            await self.disks.create(volume, spec.limits.disk_mb)
        return self.disks.driver_options(volume)

    async def _volume_exists(self, name: str) -> bool:
        try:
            await self._docker(self.client.volumes.get, name)
        except SandboxNotFound:
            return False
        return True

    async def _cleanup(self, name: str, volume: str | None, control: ControlServer) -> None:
        steps: list[Callable[[], None]] = [
            lambda: self.client.containers.get(name).remove(force=True)
        ]
        if volume is not None:
            steps.append(lambda: self.client.volumes.get(volume).remove(force=True))
        loop = asyncio.get_running_loop()
        for fn in steps:
            try:
                await loop.run_in_executor(self._executor, fn)
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                pass
        if volume is not None and self.disks is not None:
            with contextlib.suppress(SandboxError):
                await self.disks.remove(volume)
        await control.close()
        shutil.rmtree(control.control_dir, ignore_errors=True)

    async def get(self, name_or_id: str) -> Sandbox:
        attrs = await self._inspect_raw(name_or_id)
        known = self._sandboxes.get(attrs["Id"])
        if known is not None:
            return known
        labels = attrs["Config"]["Labels"] or {}
        if labels.get(LABEL_MANAGED) != "1":
            raise SandboxNotFound(f"container {name_or_id} is not an agentvm sandbox")
        env = dict(e.split("=", 1) for e in attrs["Config"]["Env"] or [] if "=" in e)
        name = attrs["Name"].lstrip("/")
        control = ControlServer(self._control_dir(attrs, name), env.get(P.TOKEN_ENV, ""))
        await control.start()
        sandbox = Sandbox(
            self,
            id=attrs["Id"],
            name=name,
            volume=labels.get(LABEL_VOLUME, ""),
            control=control,
            key=json.loads(labels.get(LABEL_KEY) or "[]"),
            connect_timeout=self.connect_timeout,
        )
        self._sandboxes[sandbox.id] = sandbox
        return sandbox

    def _control_dir(self, attrs: dict[str, Any], name: str) -> Path:
        """Where the container's supervisor dials: the directory bind-mounted at its
        control path when it was created. Another host id on the same engine (a host
        that took over a dead one's vms) listens there, not under its own id — the
        mount cannot change while the container lives. Only a directory under this
        machine's control root is used; anything else falls back to ours."""
        for mount in attrs.get("Mounts") or []:
            if mount.get("Type") == "bind" and mount.get("Destination") == P.CONTAINER_CONTROL_DIR:
                source = Path(os.path.normpath(str(mount.get("Source") or "")))
                if source.parent.parent == self.control_root.parent and source.name == name:
                    return source
        return self.control_root / name

    def _disks_of(self, volume: str) -> LoopDisks | None:
        """The disk set holding ``volume``'s image: this host id's, or (a vm taken over
        from another host id on this machine) the sibling directory that has it."""
        if self.disks is None or self.disks.exists(volume):
            return self.disks
        image = self.disks.image(volume).name  # (validates the name)
        with contextlib.suppress(OSError):
            for sibling in self.disks.root.parent.iterdir():
                if sibling != self.disks.root and (sibling / image).exists():
                    return LoopDisks(sibling)
        return self.disks

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, sandbox: Sandbox, *, timeout: float = 30.0) -> None:
        await sandbox.control.start()
        disks = self._disks_of(sandbox.volume) if sandbox.volume else None
        if disks is not None:
            # After a host reboot the loop device is gone: attach it before Docker
            # mounts the volume (usually a no-op: two small sysfs reads).
            await disks.attach(sandbox.volume)
        # The low-level call: no inspect round trip before the start.
        await self._docker(self.client.api.start, sandbox.id)
        await sandbox.wait_ready(timeout)

    async def set_cpu_shares(self, sandbox: Sandbox, shares: int = CPU_SHARES) -> None:
        """Change a running container's CPU weight (a pool container a vm took)."""
        await self._docker(self.client.api.update_container, sandbox.id, cpu_shares=shares)

    async def init_pid(self, sandbox: Sandbox) -> int:
        return int((await self._inspect_raw(sandbox.id)).get("State", {}).get("Pid") or 0)

    async def unpause(self, sandbox: Sandbox) -> None:
        await self._docker(self.client.api.unpause, sandbox.id)

    async def kill(self, sandbox: Sandbox) -> None:
        await self._docker(self.client.api.kill, sandbox.id)

    async def stop(self, sandbox: Sandbox, *, timeout: float = 5.0) -> None:
        container = await self._docker(self.client.containers.get, sandbox.id)
        await self._docker(container.stop, timeout=int(timeout))

    async def remove(self, sandbox: Sandbox | str, *, volume: bool = True) -> None:
        if isinstance(sandbox, str):
            known = self._sandboxes.get(sandbox)  # by id: no inspect round trip
            try:
                sandbox = known or await self.get(sandbox)
            except SandboxNotFound:
                return
        self._sandboxes.pop(sandbox.id, None)
        # One API call (the low-level one: no inspect before it); destroying vms is
        # on the path of every run.
        with contextlib.suppress(SandboxNotFound):
            await self._docker(self.client.api.remove_container, sandbox.id, force=True)
        if volume and sandbox.volume:
            await self.remove_volume(sandbox.volume)
        await sandbox.control.close()
        shutil.rmtree(sandbox.control.control_dir, ignore_errors=True)

    async def remove_volume(self, name: str) -> None:
        with contextlib.suppress(SandboxNotFound):
            await self._docker(self.client.api.remove_volume, name, force=True)
        # Only once Docker let go of the volume (a volume in use raised above).
        disks = self._disks_of(name)
        if disks is not None:
            await disks.remove(name)

    async def close(self) -> None:
        for sandbox in list(self._sandboxes.values()):
            await sandbox.control.close()
        self._sandboxes.clear()
        # Leave no empty per-host directory behind (sandboxes still running keep theirs).
        with contextlib.suppress(OSError):
            self.control_root.rmdir()
        if self.disks is not None:
            self.disks.prune()
        await asyncio.to_thread(self.client.close)
        self._executor.shutdown(wait=False)

    # -- inspection ------------------------------------------------------------------

    async def _inspect_raw(self, name_or_id: str) -> dict[str, Any]:
        return await self._docker(self.client.api.inspect_container, name_or_id)

    async def inspect(self, sandbox: Sandbox | str) -> SandboxInfo:
        ident = sandbox.id if isinstance(sandbox, Sandbox) else sandbox
        return _info(await self._inspect_raw(ident))

    async def list_sandboxes(self, *, all_hosts: bool = False) -> list[SandboxInfo]:
        filters = [f"{LABEL_MANAGED}=1"] + ([] if all_hosts else [f"{LABEL_HOST}={self.host_id}"])
        rows = await self._docker(self.client.api.containers, all=True, filters={"label": filters})
        infos = []
        for row in rows:
            try:
                infos.append(await self.inspect(row["Id"]))
            except SandboxNotFound:
                continue  # removed while listing
        return infos

    async def list_volumes(self, *, all_hosts: bool = False) -> list[str]:
        filters = [f"{LABEL_MANAGED}=1"] + ([] if all_hosts else [f"{LABEL_HOST}={self.host_id}"])
        vols = await self._docker(self.client.volumes.list, filters={"label": filters})
        names = {v.name for v in vols}
        if self.disks is not None:
            # This host's disk images whose Docker volume is gone count too (the
            # reaper removes them).
            names.update(self.disks.names())
        return sorted(names)

    async def memory_usage(self, sandbox: Sandbox) -> dict[str, int]:
        """The container cgroup's memory: ``usage`` and ``working_set`` (minus inactive
        file cache, what ``docker stats`` shows)."""
        stats = await self._docker(self.client.api.stats, sandbox.id, stream=False)
        mem = stats.get("memory_stats", {})
        usage = int(mem.get("usage", 0))
        inner = mem.get("stats", {})
        inactive = int(inner.get("total_inactive_file", inner.get("inactive_file", 0)))
        return {"usage": usage, "working_set": usage - inactive}


def _info(attrs: dict[str, Any]) -> SandboxInfo:
    labels = attrs["Config"]["Labels"] or {}
    state = attrs.get("State", {})
    running = state.get("Status") == "running"
    return SandboxInfo(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        status=state.get("Status", "unknown"),
        image=attrs["Config"]["Image"],
        host_id=labels.get(LABEL_HOST, ""),
        key=json.loads(labels.get(LABEL_KEY) or "[]"),
        pool=labels.get(LABEL_POOL) or None,
        volume=labels.get(LABEL_VOLUME, ""),
        labels=labels,
        exit_code=None if running else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
    )
