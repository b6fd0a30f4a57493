"""Agent sessions through the vm actor, against the fake model called directly.

    uv run python bench/sessions.py [--quick]

One run, one real engine (SQLite, in-process), one vm (a real container with the
coding agent), the host's LLM gateway in front of the fake Anthropic server
(tests/support/fake_anthropic.py, in a child process so that its threads do not
compete with the host's event loop for the GIL). Measured:

1. **turn overhead** - a prompt that takes one model turn, through the whole path
   (``vm.send_prompt`` -> actor -> session manager -> supervisor -> agent ->
   ``anthropic`` SDK -> in-sandbox forwarder -> gateway -> fake model and back), vs
   the same streamed request sent by the ``anthropic`` SDK straight to the fake
   model. ``turn_overhead_ms`` = p50(through) - p50(direct) (also p90).
2. **session ready** - ``vm.create_session("coding-agent")`` until it returns (the
   agent has answered ``initialize`` and ``session/new``), with the vm's
   pre-started agent ready (refilled between samples, outside the timing): p50/p90.
   ``session_ready_cold_ms``: the same with a custom ``env``, which always starts
   a new agent process.

The last line is one JSON object. Targets: ``turn_overhead_ms`` < 10,
``session_ready_ms`` < 500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anthropic  # noqa: E402

from host.gateway import LLMGateway  # noqa: E402
from host.sandbox import SandboxLimits  # noqa: E402
from host.vm import SandboxManager, VmOptions, vm_actor  # noqa: E402
from orchestrator import Engine, setup  # noqa: E402
from vm_images.coding_agent.config import Config  # noqa: E402
from vm_images.coding_agent.tools import SCHEMAS  # noqa: E402

HOST_ID = f"bench-sess{os.getpid()}"
HOST_KEY = "sk-ant-bench-host-key"
KEY = ["bench-sessions"]


# The fake model in a child process: plays `ok` turns until its stdin closes.
FAKE = """
import sys
from tests.support.fake_anthropic import FakeAnthropic, Turn
with FakeAnthropic() as fake:
    fake.script(*[Turn.text("ok") for _ in range(int(sys.argv[1]))])
    print(fake.url, flush=True)
    sys.stdin.read()
"""


async def start_fake(turns: int) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FAKE,
        str(turns),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    url = (await proc.stdout.readline()).decode().strip()
    if not url.startswith("http"):
        raise RuntimeError("the fake model did not start")
    return proc, url


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> float:
    return round(value * 1000, 2)


async def timed(fn: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


def vm_sessions(engine: Engine) -> Any:
    """The vm's in-memory session bookkeeping (to wait for the pre-started agent)."""
    for inst in engine.instances.values():
        sessions = getattr(inst.vars, "sessions", None)
        if sessions is not None and list(inst.key) == KEY:
            return sessions
    raise RuntimeError("vm actor not awake")


async def main(quick: bool) -> dict[str, Any]:
    n_turns = 30 if quick else 150
    n_ready = 8 if quick else 30
    n_cold = 2 if quick else 8
    fake, fake_url = await start_fake(2 * n_turns + 20)
    gateway = LLMGateway(api_key=HOST_KEY, upstream=fake_url)
    options = VmOptions(
        bundles=["common", "coding-agent"],
        limits=SandboxLimits(memory_mb=1024, cpus=2.0, pids=256, tmp_mb=64),
    )
    manager = await SandboxManager.open(
        host_id=HOST_ID, pool_size=0, defaults=options, reap_interval=None, gateway=gateway
    )
    tmp = tempfile.TemporaryDirectory()
    engine = Engine(setup(use={"vm": vm_actor(manager)}), db=str(Path(tmp.name) / "bench.db"))
    await engine.start()
    manager.attach(engine)
    vm = engine.client().vm.get_or_create(KEY)
    direct = anthropic.AsyncAnthropic(base_url=fake_url, api_key=HOST_KEY, max_retries=0)
    try:
        await vm.start()

        # -- session ready --------------------------------------------------------------
        async def settle() -> None:
            sm = vm_sessions(engine).manager
            if sm is not None:
                await sm.wait_prestarted()

        async def ready_once(env: dict[str, str] | None) -> float:
            await settle()
            start = time.perf_counter()
            info = await vm.create_session("coding-agent", env=env)
            elapsed = time.perf_counter() - start
            await vm.close_session(info["session_id"])
            return elapsed

        await ready_once(None)  # warm-up
        ready = [await ready_once(None) for _ in range(n_ready)]
        cold = [await ready_once({"BENCH": "cold"}) for _ in range(n_cold)]

        # -- turn overhead --------------------------------------------------------------
        info = await vm.create_session("coding-agent", model="bench-model")
        sid = info["session_id"]
        await settle()

        async def through() -> None:
            result = await vm.send_prompt(sid, "say ok")
            assert result["stop_reason"] == "end_turn", result

        history: list[dict[str, Any]] = []
        system = Config().system("/home/user")

        async def direct_turn() -> None:
            # The same request shape the agent sends: streamed, system, tools, history.
            history.append({"role": "user", "content": [{"type": "text", "text": "say ok"}]})
            async with direct.messages.stream(
                model="bench-model",
                max_tokens=8192,
                system=system,
                messages=history,  # type: ignore[arg-type]
                tools=SCHEMAS,  # type: ignore[arg-type]
            ) as stream:
                async for _ in stream:
                    pass
                message = await stream.get_final_message()
            history.append({"role": "assistant", "content": [{"type": "text", "text": "ok"}]})
            assert message.stop_reason == "end_turn"

        # Interleave, so drift (GC, other load) hits both sides alike.
        through_s: list[float] = []
        direct_s: list[float] = []
        for _ in range(3):
            await direct_turn()
            await through()
        for _ in range(n_turns):
            start = time.perf_counter()
            await direct_turn()
            direct_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            await through()
            through_s.append(time.perf_counter() - start)
        await vm.close_session(sid)
    finally:
        await direct.close()
        await vm.destroy()
        await engine.stop()
        await manager.close()
        await gateway.close()
        assert fake.stdin is not None
        fake.stdin.close()
        await fake.wait()
        tmp.cleanup()

    t50, d50 = statistics.median(through_s), statistics.median(direct_s)
    t90, d90 = pct(through_s, 0.9), pct(direct_s, 0.9)
    return {
        "turn_overhead_ms": ms(t50 - d50),
        "turn_overhead_p90_ms": ms(t90 - d90),
        "turn_through_ms": ms(t50),
        "turn_through_p90_ms": ms(t90),
        "turn_direct_ms": ms(d50),
        "turn_direct_p90_ms": ms(d90),
        "session_ready_ms": ms(statistics.median(ready)),
        "session_ready_p90_ms": ms(pct(ready, 0.9)),
        "session_ready_cold_ms": ms(statistics.median(cold)),
        "turns": n_turns,
        "ready_samples": n_ready,
        "quick": quick,
        "targets": {"turn_overhead_ms": 10, "session_ready_ms": 500},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="session benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples, under a minute")
    started = time.perf_counter()
    figures = asyncio.run(main(parser.parse_args().quick))
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))
