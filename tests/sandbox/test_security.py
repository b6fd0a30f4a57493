"""Each hardening measure, checked from inside a real sandbox (see docs/security.md)."""

from __future__ import annotations

import asyncio

import pytest
from sandbox_helpers import eventually

from host.sandbox import DockerBackend, Sandbox, SandboxLimits, SandboxSpec, SupervisorError

# One backend and one sandbox for the whole module (conftest's module_backend and
# module_sandbox, in the module's event loop): the attacks here must all fail and
# change nothing, so a container start-up per test buys nothing; the tests that need
# a sandbox of their own (limits, network, the fork bomb) create it.
pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture
def backend(module_backend: DockerBackend) -> DockerBackend:
    return module_backend


@pytest.fixture
def sandbox(module_sandbox: Sandbox) -> Sandbox:
    return module_sandbox


def status_field(status: str, name: str) -> str:
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} missing from /proc/self/status")


async def test_unprivileged_user(sandbox: Sandbox) -> None:
    result = await sandbox.exec("id -u; id -g; ps -o user= -p 1")
    assert result.stdout.split() == ["1000", "1000", "user"]


async def test_no_capabilities_no_new_privileges_seccomp(sandbox: Sandbox) -> None:
    status = (await sandbox.read_file("/proc/self/status")).decode()
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status_field(status, field), 16) == 0, field
    assert status_field(status, "NoNewPrivs") == "1"
    assert status_field(status, "Seccomp") == "2"  # filter mode: the default profile


async def test_cannot_raise_privileges(sandbox: Sandbox) -> None:
    # A setuid binary does not elevate under no-new-privileges.
    result = await sandbox.exec("su -c id root </dev/null; id -u")
    assert result.stdout.strip().splitlines()[-1] == "1000"
    # A user namespace would grant capabilities inside it: refused.
    unshare = await sandbox.exec(["unshare", "--user", "--map-root-user", "id", "-u"])
    assert unshare.exit_code != 0


async def test_mount_fails(sandbox: Sandbox) -> None:
    result = await sandbox.exec("mount -t tmpfs none /tmp")
    assert result.exit_code != 0
    still = await sandbox.exec("grep -c ' /tmp ' /proc/mounts")
    assert still.stdout.strip() == "1"


async def test_root_filesystem_is_read_only(sandbox: Sandbox) -> None:
    for target in ("/etc/passwd", "/etc/new-file", "/usr/bin/evil"):
        result = await sandbox.exec(f"echo x >> {target}")
        assert result.exit_code != 0, target
    with pytest.raises(SupervisorError) as info:
        await sandbox.write_file("/etc/agentvm-test", "x")
    assert info.value.errno_name in {"EROFS", "EACCES"}
    # Writable places: home (a volume) and /tmp (a tmpfs).
    assert (await sandbox.exec("touch ~/ok /tmp/ok")).exit_code == 0


async def test_only_the_control_directory_comes_from_the_host(sandbox: Sandbox) -> None:
    mounts = (await sandbox.read_file("/proc/self/mountinfo")).decode().splitlines()
    targets = {line.split()[4]: line for line in mounts}
    # Docker's own per-container files and kernel file systems are expected.
    allowed = {"/", "/home/user", "/tmp", "/run/agentvm", "/etc/hosts", "/etc/hostname",
               "/etc/resolv.conf", "/dev/shm", "/dev/termination-log"}  # fmt: skip
    host_backed = {
        target
        for target, line in targets.items()
        if not target.startswith(("/proc", "/sys", "/dev"))
        and line.split(" - ")[1].split()[0] not in {"proc", "sysfs", "tmpfs", "devpts", "mqueue"}
    }
    assert host_backed <= allowed, host_backed - allowed
    assert " ro," in targets["/run/agentvm"] or targets["/run/agentvm"].split()[5].startswith("ro")
    assert not await sandbox.exists("/var/run/docker.sock")
    assert not await sandbox.exists("/run/docker.sock")


async def test_supervisor_is_protected_from_sandbox_code(sandbox: Sandbox) -> None:
    # Non-dumpable: same-uid code cannot read its environment (the token) or ptrace it.
    environ = await sandbox.exec("cat /proc/1/environ")
    assert environ.exit_code != 0
    # PID 1 of a pid namespace ignores SIGKILL from inside it.
    await sandbox.exec("kill -9 1")
    assert await sandbox.ping() == 1
    # Children do not inherit the token.
    env = await sandbox.exec("env")
    assert "AGENTVM_SUPERVISOR_TOKEN" not in env.stdout


async def test_network_none_has_only_loopback(sandbox: Sandbox) -> None:
    interfaces = (await sandbox.exec("ls /sys/class/net")).stdout.split()
    assert interfaces == ["lo"]
    fetch = await sandbox.exec("curl -sS --max-time 5 http://deb.debian.org/", timeout=30)
    assert fetch.exit_code != 0


async def test_bridge_network_when_asked(backend: DockerBackend, spec: SandboxSpec) -> None:
    sandbox = await backend.create(spec.model_copy(update={"network": "bridge"}))
    interfaces = (await sandbox.exec("ls /sys/class/net")).stdout.split()
    assert "lo" in interfaces and len(interfaces) >= 2


async def test_fork_bomb_is_contained(backend: DockerBackend, spec: SandboxSpec) -> None:
    bystander = await backend.create(spec)
    bomb_box = await backend.create(spec)
    limit = spec.limits.pids
    assert (await bomb_box.read_file("/sys/fs/cgroup/pids/pids.max")).strip() == str(limit).encode()
    # Its stdio goes to /dev/null: the supervisor closes a finished leader's pipes, and
    # the bomb's "fork: retry" errors would otherwise end it by SIGPIPE, not the limit.
    bomb = await bomb_box.spawn("exec >/dev/null 2>&1; :(){ :|:& };:")

    async def exhausted() -> bool:
        current = int(await bomb_box.read_file("/sys/fs/cgroup/pids/pids.current"))
        return current >= limit - 8

    # Reading a file needs no fork: the supervisor answers even at the limit.
    await eventually(exhausted, what="the fork bomb to reach the pids limit")

    # The host, the engine and the other sandbox keep working meanwhile.
    assert (await bystander.exec("echo fine")).stdout == "fine\n"
    assert (await backend.inspect(bystander)).status == "running"

    await bomb_box.kill_process(bomb.pid)  # the whole session goes

    async def recovered() -> bool:
        try:
            return (await bomb_box.exec("echo recovered", timeout=5)).stdout == "recovered\n"
        except SupervisorError:  # EAGAIN while pids are still being freed
            await bomb_box.kill_process(bomb.pid)
            return False

    await eventually(recovered, what="the bombed sandbox to recover")


async def test_exceeding_memory_kills_the_process_not_the_sandbox(
    backend: DockerBackend, image: str
) -> None:
    sandbox = await backend.create(
        SandboxSpec(image=image, limits=SandboxLimits(memory_mb=128, pids=64))
    )
    hog = await sandbox.exec(["python3", "-c", "b = b'x' * (512 * 1024 * 1024); print('no')"])
    assert hog.exit_code == 137  # SIGKILL from the cgroup OOM killer
    assert "no" not in hog.stdout
    assert await sandbox.ping() == 1
    assert (await sandbox.exec("echo alive")).stdout == "alive\n"


async def test_cpu_limit_is_applied(backend: DockerBackend, image: str) -> None:
    sandbox = await backend.create(SandboxSpec(image=image, limits=SandboxLimits(cpus=0.5)))
    quota = await sandbox.exec("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max")
    # cgroup v1 shows quota/period (50000 of 100000); v2 shows "50000 100000".
    assert "50000" in quota.stdout


async def test_concurrent_calls_do_not_interfere(sandbox: Sandbox) -> None:
    results = await asyncio.gather(*(sandbox.exec(f"echo {i}") for i in range(50)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(50)]
