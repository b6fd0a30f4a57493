"""exec: commands run to completion inside a real sandbox."""

from __future__ import annotations

import pytest
from sandbox_helpers import eventually

from host.sandbox import DockerBackend, FileNotFoundInSandbox, Sandbox, SandboxSpec

# One backend and one sandbox for the whole module (conftest's module_backend and
# module_sandbox, in the module's event loop): each test runs commands that leave
# nothing another one depends on, so a container start-up per test buys nothing.
pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture
def backend(module_backend: DockerBackend) -> DockerBackend:
    return module_backend


@pytest.fixture
def sandbox(module_sandbox: Sandbox) -> Sandbox:
    return module_sandbox


async def test_string_runs_through_bash(sandbox: Sandbox) -> None:
    result = await sandbox.exec("echo $((6 * 7)); echo oops >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "42\n", "oops\n")
    assert not result.timed_out and not result.truncated


async def test_argv_is_not_split_by_a_shell(sandbox: Sandbox) -> None:
    result = await sandbox.exec(["printf", "%s|", "a b", "$HOME", "*"])
    assert result.stdout == "a b|$HOME|*|"


async def test_runs_as_user_in_home(sandbox: Sandbox) -> None:
    result = await sandbox.exec("id -un; pwd; echo $HOME")
    assert result.stdout.split() == ["user", "/home/user", "/home/user"]


async def test_cwd_relative_to_home_and_absolute(sandbox: Sandbox) -> None:
    await sandbox.mkdir("proj/sub")
    assert (await sandbox.exec("pwd", cwd="proj/sub")).stdout == "/home/user/proj/sub\n"
    assert (await sandbox.exec(["pwd"], cwd="/tmp")).stdout == "/tmp\n"


async def test_missing_cwd_is_not_found_naming_it(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFoundInSandbox) as info:
        await sandbox.exec("true", cwd="no/such/dir")
    assert info.value.path == "/home/user/no/such/dir"
    assert "no/such/dir" in str(info.value)


async def test_env(sandbox: Sandbox) -> None:
    result = await sandbox.exec('echo "$GREETING, $WHO"', env={"GREETING": "hi", "WHO": "there"})
    assert result.stdout == "hi, there\n"


async def test_vm_environment_reaches_commands(backend: DockerBackend, spec: SandboxSpec) -> None:
    sandbox = await backend.create(spec.model_copy(update={"env": {"VM_OPTION": "from-spec"}}))
    result = await sandbox.exec('echo "$VM_OPTION"; env | grep -c ^AGENTVM_ || true')
    assert result.stdout.split() == ["from-spec", "0"]


async def test_stdin_is_binary_safe(sandbox: Sandbox) -> None:
    data = bytes(range(256)) * 100
    result = await sandbox.exec(["cat"], stdin=data)
    assert result.stdout_bytes == data


async def test_output_is_binary_safe(sandbox: Sandbox) -> None:
    result = await sandbox.exec(["printf", "\\000\\377ok"])
    assert result.stdout_bytes == b"\x00\xffok"


async def test_missing_binary_exits_127(sandbox: Sandbox) -> None:
    argv = await sandbox.exec(["definitely-not-installed", "--flag"])
    assert argv.exit_code == 127 and "not found" in argv.stderr
    shell = await sandbox.exec("definitely-not-installed --flag")
    assert shell.exit_code == 127


async def test_timeout_kills_the_whole_process_group(sandbox: Sandbox) -> None:
    result = await sandbox.exec(
        "sleep 1000 & echo $! > /tmp/bg.pid; bash -c 'sleep 1001' & sleep 1002", timeout=1
    )
    assert result.timed_out
    assert result.exit_code == 137
    background = (await sandbox.read_file("/tmp/bg.pid")).decode().strip()

    async def all_gone() -> bool:
        ps = await sandbox.exec(["ps", "-eo", "pid=,args="])
        return background not in ps.stdout.split() and "sleep 100" not in ps.stdout

    await eventually(all_gone, what="the timed-out process group to disappear")


async def test_output_over_the_cap_is_truncated_and_flagged(sandbox: Sandbox) -> None:
    result = await sandbox.exec("head -c 2000000 /dev/zero; echo done >&2", max_output=1000)
    assert result.truncated
    assert len(result.stdout_bytes) == 1000
    assert result.stderr == "done\n"
    assert result.exit_code == 0


async def test_large_output_under_the_cap_arrives_whole(sandbox: Sandbox) -> None:
    result = await sandbox.exec("head -c 3000000 /dev/urandom | base64 -w0", max_output=5_000_000)
    assert not result.truncated
    assert len(result.stdout) == 4_000_000


async def test_background_child_holding_the_pipe_does_not_hang_exec(sandbox: Sandbox) -> None:
    # sleep 2000: not a process test_timeout_kills_the_whole_process_group looks for.
    result = await sandbox.exec("sleep 2000 & echo started")
    assert result.stdout == "started\n" and not result.timed_out
