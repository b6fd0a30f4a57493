"""The registry the live test server runs (``--registry tests.server.registry:build``).

``vm`` here is a *test double of the vm actor*: an ordinary actor whose
``read_file``/``write_file``/``readdir``/``exec`` actions keep files in its own
state. It stands in for the real Docker-backed vm actor (built in host/vm/) so the
``/vms/...`` routes and the CLI's ``vm`` commands are tested through the engine
exactly as they call the real one, without Docker.
"""

from __future__ import annotations

import asyncio
import base64
import posixpath
from typing import Any

from examples import workflows as ex
from orchestrator import (
    ActorContext,
    AgentVMError,
    Loop,
    Registry,
    WorkflowContext,
    actor,
    queue,
    workflow,
)


class FileNotFound(AgentVMError):
    group = "vm"
    code = "file_not_found"
    http_status = 404


# --- counter: actions, a queue, broadcasts, bytes ------------------------------------


def increment(c: ActorContext, amount: int = 1) -> int:
    c.state["count"] += amount
    c.broadcast("changed", {"count": c.state["count"]})
    return int(c.state["count"])


def get_count(c: ActorContext) -> int:
    return int(c.state["count"])


def echo(c: ActorContext, value: Any) -> Any:
    return value


def announce(c: ActorContext, event: str, payload: Any = None) -> None:
    c.broadcast(event, payload)


def blob(c: ActorContext, size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def concat(c: ActorContext, a: bytes, b: bytes) -> bytes:
    return a + b


counter = actor(
    state={"count": 0},
    queues={"jobs": queue(), "slow": queue()},
    actions={
        "increment": increment,
        "get_count": get_count,
        "echo": echo,
        "announce": announce,
        "blob": blob,
        "concat": concat,
    },
)


# --- worker: a workflow answering completable requests; "parked" is never consumed --------


async def _work(ctx: WorkflowContext) -> None:
    async def body(lctx: WorkflowContext) -> Any:
        msg = await lctx.queue.next("wait", names=["requests"], completable=True)
        if msg is None:
            return Loop.continue_()
        doubled = await lctx.step("double", lambda: msg.body["n"] * 2)
        lctx.broadcast("done", {"n": msg.body["n"], "doubled": doubled})
        await msg.complete({"doubled": doubled})
        return Loop.continue_()

    await ctx.loop("requests-loop", body)


worker = actor(
    state={},
    queues={"requests": queue(), "parked": queue()},
    run=workflow(_work),
)


# --- vm: a test double of the vm actor (files in its state) ------------------------------


def _files(c: ActorContext) -> dict[str, str]:
    files: dict[str, str] = c.state.setdefault("files", {})
    return files


def read_file(c: ActorContext, path: str) -> bytes:
    data = _files(c).get(path)
    if data is None:
        raise FileNotFound(f"no such file: {path}", path=path)
    return base64.b64decode(data)


def write_file(
    c: ActorContext, path: str, content: bytes | str, opts: dict[str, Any] | None = None
) -> None:
    raw = content.encode() if isinstance(content, str) else content
    _files(c)[path] = base64.b64encode(raw).decode()


def readdir(c: ActorContext, path: str) -> list[dict[str, Any]]:
    prefix = path.rstrip("/") + "/"
    out: dict[str, dict[str, Any]] = {}
    for name, data in _files(c).items():
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            first, sep, _ = rest.partition("/")
            if sep:
                out.setdefault(first, {"name": first, "type": "dir", "size": 0})
            else:
                out[first] = {"name": first, "type": "file", "size": len(base64.b64decode(data))}
    return sorted(out.values(), key=lambda e: e["name"])


def exec_(c: ActorContext, command: str, opts: dict[str, Any] | None = None) -> dict[str, Any]:
    cwd = (opts or {}).get("cwd", "/home/user")
    if command.startswith("cd ") and command.endswith(" && pwd"):
        target = command[3 : -len(" && pwd")].strip("'\"")
        return {
            "exit_code": 0,
            "stdout": posixpath.normpath(posixpath.join(cwd, target)) + "\n",
            "stderr": "",
            "timed_out": False,
        }
    if command.startswith("exit "):
        return {
            "exit_code": int(command.split()[1]),
            "stdout": "",
            "stderr": "bye\n",
            "timed_out": False,
        }
    return {"exit_code": 0, "stdout": f"{cwd}$ {command}\n", "stderr": "", "timed_out": False}


vm = actor(
    state={"files": {}},
    actions={"read_file": read_file, "write_file": write_file, "readdir": readdir, "exec": exec_},
)


# --- runner: run queues (per-message workflows) for the runs routes ------------------------
#
# "jobs" (concurrency 2): steps "prepare" (counted in state) and "work", which fails
# while the actor's state says "broken" (``break_work``/``heal`` toggle it) and holds
# for ``body["hold"]`` seconds; the recorded step times show runs overlapping.
# "slow" (concurrency 1): one step sleeping ``body["seconds"]``, to be cancelled.


async def run_job(ctx: WorkflowContext, message: Any) -> Any:
    body = message.body if isinstance(message.body, dict) else {}
    await ctx.run_meta(label=body.get("label"))

    def prepare() -> int:
        ctx.state["prepared"] = ctx.state.get("prepared", 0) + 1
        return int(ctx.state["prepared"])

    prepared = await ctx.step("prepare", prepare)

    async def work() -> str:
        if ctx.state.get("broken"):
            raise RuntimeError("work is broken")
        if body.get("hold"):
            await asyncio.sleep(float(body["hold"]))
        return f"done {body.get('label')}"

    result = await ctx.step("work", work, max_retries=int(body.get("retries", 0)))
    return {"result": result, "prepared": prepared}


async def run_slow(ctx: WorkflowContext, message: Any) -> Any:
    seconds = float(message.body.get("seconds", 60)) if isinstance(message.body, dict) else 60.0

    async def nap() -> str:
        await asyncio.sleep(seconds)
        return "woke"

    return await ctx.step("nap", nap)


def break_work(c: ActorContext) -> None:
    c.state["broken"] = True


def heal(c: ActorContext) -> None:
    c.state["broken"] = False


runner = actor(
    state={"prepared": 0, "broken": False},
    queues={
        "jobs": queue(run=run_job, concurrency=2),
        "slow": queue(run=run_slow, concurrency=1),
    },
    actions={"break_work": break_work, "heal": heal},
)


def build() -> Registry:
    registry = Registry({"counter": counter, "worker": worker, "vm": vm, "runner": runner})
    for name, definition in ex.progress_broadcast().actors.items():
        registry.add(name, definition)
    return registry
