"""Long-running processes: spawn, streamed output, stdin, wait, kill, list."""

from __future__ import annotations

import asyncio

import pytest

from host.sandbox import (
    ProcessEvent,
    ProcessExit,
    ProcessNotFound,
    ProcessOutput,
    Sandbox,
    SandboxTimeout,
)

pytestmark = pytest.mark.docker


async def collect(events: object) -> tuple[bytes, bytes, int]:
    out, err, code = bytearray(), bytearray(), None
    async for event in events:  # type: ignore[attr-defined]
        if isinstance(event, ProcessOutput):
            (out if event.stream == "stdout" else err).extend(event.data)
        elif isinstance(event, ProcessExit):
            code = event.exit_code
    assert code is not None
    return bytes(out), bytes(err), code


async def test_spawn_streams_output_and_exit(sandbox: Sandbox) -> None:
    proc = await sandbox.spawn("for i in 1 2 3; do echo line$i; done; echo err >&2; exit 4")
    assert proc.pid > 1
    out, err, code = await collect(proc.events())
    assert (out, err, code) == (b"line1\nline2\nline3\n", b"err\n", 4)
    assert await proc.wait() == 4


async def test_output_arrives_while_the_process_runs(sandbox: Sandbox) -> None:
    # The process waits for stdin after its first line: that line must stream first.
    proc = await sandbox.spawn(["bash", "-c", "echo ready; read x; echo got-$x"])
    events = proc.events()
    first = await anext(events)
    assert isinstance(first, ProcessOutput) and first.data == b"ready\n"
    await proc.write_stdin("ping\n")
    rest = [e async for e in events]
    assert rest[0] == ProcessOutput(pid=proc.pid, stream="stdout", data=b"got-ping\n")
    assert rest[-1] == ProcessExit(pid=proc.pid, exit_code=0)


async def test_stdin_write_and_close(sandbox: Sandbox) -> None:
    proc = await sandbox.spawn(["wc", "-c"])
    await proc.write_stdin(b"\x00" * 1_000_000)
    await proc.write_stdin("abc")
    await proc.close_stdin()
    out, _, code = await collect(proc.events())
    assert (out.strip(), code) == (b"1000003", 0)


async def test_on_event_callback(sandbox: Sandbox) -> None:
    seen: list[ProcessEvent] = []
    done = asyncio.Event()

    def on_event(event: ProcessEvent) -> None:
        seen.append(event)
        if isinstance(event, ProcessExit):
            done.set()

    await sandbox.spawn("echo hello", on_event=on_event)
    await asyncio.wait_for(done.wait(), 30)
    assert [type(e) for e in seen] == [ProcessOutput, ProcessExit]
    assert seen[0].data == b"hello\n"  # type: ignore[union-attr]


async def test_list_kill_and_wait(sandbox: Sandbox) -> None:
    proc = await sandbox.spawn(["sleep", "1000"])
    listed = {p.pid: p for p in await sandbox.list_processes()}
    assert listed[proc.pid].running and listed[proc.pid].argv == ["sleep", "1000"]
    with pytest.raises(SandboxTimeout):
        await sandbox.wait_process(proc.pid, timeout=0.2)
    await sandbox.kill_process(proc.pid, "TERM")
    assert await sandbox.wait_process(proc.pid, timeout=30) == 128 + 15
    listed = {p.pid: p for p in await sandbox.list_processes()}
    assert not listed[proc.pid].running and listed[proc.pid].exit_code == 143


async def test_unknown_pid(sandbox: Sandbox) -> None:
    with pytest.raises(ProcessNotFound):
        await sandbox.wait_process(999_999)
    with pytest.raises(ProcessNotFound):
        await sandbox.kill_process(999_999)


async def test_spawning_a_missing_binary_is_not_found(sandbox: Sandbox) -> None:
    from host.sandbox import FileNotFoundInSandbox

    with pytest.raises(FileNotFoundInSandbox):
        await sandbox.spawn(["no-such-binary"])


async def test_heavy_output_is_flow_controlled_and_complete(sandbox: Sandbox) -> None:
    proc = await sandbox.spawn("head -c 50000000 /dev/zero")
    total = 0
    async for event in proc.events():
        if isinstance(event, ProcessOutput):
            total += len(event.data)
            if total < 8_000_000:
                await asyncio.sleep(0)  # a slow reader early on: the window must hold
    assert total == 50_000_000


async def test_exec_children_are_not_listed(sandbox: Sandbox) -> None:
    await sandbox.exec("true")
    running = asyncio.create_task(sandbox.exec("sleep 2"))
    assert await sandbox.list_processes() == []
    await running
