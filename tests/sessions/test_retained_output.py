"""Supervisor: ``retain_output`` keeps stdout until acknowledged, so a host that was
away replays it from its own offset (the tail buffer alone would keep 256 KiB)."""

from __future__ import annotations

import pytest

from host.sandbox import DockerBackend, ProcessExit, ProcessOutput, Sandbox, SupervisorError

pytestmark = pytest.mark.docker

# 1 MiB of numbered lines, written while no host listens.
SCRIPT = "import sys\nfor i in range(65536): sys.stdout.write(f'{i:015d}\\n')\n"


async def test_replay_from_an_offset_after_the_host_was_away(sandbox: Sandbox) -> None:
    proc = await sandbox.spawn(["python3", "-c", SCRIPT], retain_output=True)
    assert proc.offset == 0
    host_id = sandbox.backend.host_id  # type: ignore[attr-defined]
    await sandbox.close()  # the host goes away before reading anything
    backend = await DockerBackend.connect(host_id)
    try:
        adopted = await backend.get(sandbox.name)
        assert await adopted.wait_process(proc.pid, timeout=30) == 0  # exited meanwhile
        handle = await adopted.attach(proc.pid, offset=0)
        assert handle.offset == 0
        out = bytearray()
        async for ev in handle.events():
            if isinstance(ev, ProcessOutput) and ev.stream == "stdout":
                out += ev.data
            elif isinstance(ev, ProcessExit):
                assert ev.exit_code == 0
        expected = "".join(f"{i:015d}\n" for i in range(65536)).encode()
        assert bytes(out) == expected
        # Acknowledge half; a later attach starts there, and before it is refused.
        await adopted.ack_output(proc.pid, len(expected) // 2)
        again = await adopted.attach(proc.pid)
        assert again.offset == len(expected) // 2
        rest = b"".join(
            [
                ev.data
                async for ev in again.events()
                if isinstance(ev, ProcessOutput) and ev.stream == "stdout"
            ]
        )
        assert rest == expected[len(expected) // 2 :]
        with pytest.raises(SupervisorError, match="not retained"):
            await adopted.attach(proc.pid, offset=0)
    finally:
        await backend.close()
