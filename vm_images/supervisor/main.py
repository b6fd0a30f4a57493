"""Supervisor entry point: PID 1 duties and the dial-in loop to the host.

The host listens on ``<control dir>/control.sock``; we connect out to it, say
hello with the token the host gave this container, serve calls until the link
drops, and dial again with backoff (the host may be restarting). Processes keep
running across reconnects.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import random
import signal
import sys
from typing import Any

from . import protocol as P
from .egress import start_egress
from .gateway import start_gateway
from .link import Handler, Link
from .ops_files import make_handlers as file_handlers
from .ops_ports import make_handlers as port_handlers
from .ops_procs import make_handlers as proc_handlers
from .ops_pty import make_handlers as pty_handlers
from .procs import ProcessTable
from .pty_term import TerminalTable
from .reaper import Reaper
from .watch import make_handlers as watch_handlers

log = logging.getLogger("agentvm.supervisor")

BACKOFF_START = 0.02
BACKOFF_MAX = 2.0


def harden_self() -> None:
    """Make PID 1 non-dumpable: same-uid sandbox code cannot ptrace it or read its
    environment (which held the token). Children get dumpable back on execve."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        log.warning("could not make the supervisor non-dumpable")


def ping_handler() -> dict[str, Handler]:
    async def op_ping(link: Any, ch: Any, args: dict[str, Any], payload: bytes) -> Any:
        return {"pid": os.getpid()}, payload

    return {"ping": op_ping}


async def dial(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path, limit=P.MAX_FRAME)


async def serve(control_dir: str, token: str) -> None:
    loop = asyncio.get_running_loop()
    reaper = Reaper(loop)
    reaper.install()
    table = ProcessTable(reaper)
    terminals = TerminalTable(reaper)
    handlers = {**proc_handlers(table), **file_handlers(table), **ping_handler()}
    handlers.update(pty_handlers(terminals))
    handlers.update({**port_handlers(), **watch_handlers()})
    stop = asyncio.Event()

    def on_term() -> None:
        table.kill_all()
        terminals.kill_all()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_term)

    gateway = await start_gateway(control_dir)
    egress = await start_egress(control_dir)
    path = os.path.join(control_dir, P.SOCKET_NAME)
    boot_id = os.urandom(8).hex()
    delay = BACKOFF_START
    while not stop.is_set():
        try:
            reader, writer = await dial(path)
        except OSError:
            # Host not listening (yet, or restarting): back off with jitter.
            try:
                await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
            except TimeoutError:
                pass
            delay = min(delay * 2, BACKOFF_MAX)
            continue
        delay = BACKOFF_START
        link = Link(reader, writer, handlers)
        hello = {
            "t": P.HELLO,
            "ch": 0,
            "version": P.VERSION,
            "token": token,
            "pid": os.getpid(),
            "boot_id": boot_id,
        }
        try:
            await link.send(hello)
        except ConnectionError:
            continue
        runner = asyncio.create_task(link.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not runner.done():
            link.close()
            runner.cancel()
    for server in (gateway, egress):
        if server is not None:
            server.close()
    log.info("supervisor stopping")


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("AGENTVM_SUPERVISOR_LOG", "WARNING"),
        format="agentvm-supervisor: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    control_dir = os.environ.get("AGENTVM_CONTROL_DIR", P.CONTAINER_CONTROL_DIR)
    # The token proves to the host that it talks to the supervisor it started;
    # drop it from the environment so children never see it.
    token = os.environ.pop(P.TOKEN_ENV, "")
    harden_self()
    os.chdir(os.environ.get("HOME") or "/")
    asyncio.run(serve(control_dir, token))
