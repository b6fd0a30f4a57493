"""Terminal operations: open, attach (output out, keystrokes and resizes in), input,
resize, close, list (docs/protocol.md, "terminals")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .errors import OpError
from .link import Channel, Handler, Link, Reply
from .pty_term import Listener, Terminal, TerminalTable, check_size

# Streams on an attach channel: host -> supervisor keystrokes and "<cols> <rows>".
IN, RESIZE, OUT = "in", "resize", "out"


def _parse_resize(data: bytes) -> tuple[int, int]:
    try:
        cols_text, rows_text = data.decode("ascii").split()
        size = check_size({"cols": int(cols_text), "rows": int(rows_text)}, required=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OpError("EINVAL", "a resize is '<cols> <rows>'") from exc
    assert size is not None
    return size


async def _take_input(ch: Channel, term: Terminal) -> None:
    """Keystrokes and resizes from the host until it detaches (EOF on ``in``)."""
    while True:
        stream, data = await ch.recv()
        if stream is None:
            return  # the link closed
        if data is None:
            if stream == IN:
                return
            continue
        if not data:
            continue
        if stream == IN:
            with contextlib.suppress(OpError):  # the shell is gone: nothing to type into
                await term.write(data)
        elif stream == RESIZE:
            with contextlib.suppress(OpError, OSError):
                term.resize(*_parse_resize(data))


async def _replay(ch: Channel, term: Terminal, me: Listener) -> None:
    """Send the scroll-back (the pump waits meanwhile, so this ends)."""
    pos = term.base
    while pos < term.total and term.claim is me:
        pos = max(pos, term.base)
        data = bytes(term.ring[pos - term.base :])
        pos += len(data)
        await ch.send_data(OUT, data)


def make_handlers(table: TerminalTable) -> dict[str, Handler]:
    async def op_open(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        term = table.open(args)
        return {"id": term.id, "pid": term.pid, "cols": term.cols, "rows": term.rows}, b""

    async def op_attach(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        """Scroll-back first, then live output; ends when the terminal exits (its
        exit code), or when the host detaches or another attach replaces this one."""
        term = table.get(args.get("id"))
        if term.has_listener():
            if not args.get("replace", True):
                raise OpError("EBUSY", f"terminal {term.id} is attached elsewhere")
            assert term.claim is not None
            term.claim.kicked.set()

        async def sink(data: bytes) -> None:
            await ch.send_data(OUT, data)

        me = Listener(sink, link)
        # Claimed before the replay (the older listener stops getting output); the
        # pump sends to us once the replay caught up.
        term.claim, term.listener, term.detached_at = me, None, None
        term.replay_started()  # the pump waits until we are live (or gave up)
        try:
            size = check_size(args, required=False)
            if size is not None and term.exit_code is None:
                term.resize(*size)
            await ch.send_event(
                "attached", id=term.id, pid=term.pid, cols=term.cols, rows=term.rows
            )
            # A newer attach stops the replay even while it waits for credit.
            replay = asyncio.ensure_future(_replay(ch, term, me))
            kicked = asyncio.ensure_future(me.kicked.wait())
            try:
                await asyncio.wait({replay, kicked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (replay, kicked):
                    fut.cancel()
            finished = replay.done() and not replay.cancelled()
            failure = replay.exception() if finished else None
            if failure is not None:
                raise failure
            if term.claim is not me or not finished:
                return {"id": term.id, "detached": True, "reason": "replaced"}, b""
            term.listener = me  # no await since the last check: nothing slips through
        except BaseException:
            term.detach(me)
            raise
        finally:
            term.replay_ended()
        waits: dict[str, asyncio.Future[Any]] = {
            "input": asyncio.ensure_future(_take_input(ch, term)),
            "kicked": asyncio.ensure_future(me.kicked.wait()),
            "done": asyncio.ensure_future(asyncio.shield(term.done)),
        }
        try:
            await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits.values():
                fut.cancel()
            term.detach(me)
        if waits["done"].done() and not waits["done"].cancelled():
            return {"id": term.id, "exit_code": term.exit_code}, b""
        reason = "replaced" if me.kicked.is_set() else "detached"
        return {"id": term.id, "detached": True, "reason": reason}, b""

    async def op_input(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        term = table.get(args.get("id"))
        if term.exit_code is not None:
            raise OpError("EPIPE", f"terminal {term.id} has exited")
        await term.write(payload)
        return None, b""

    async def op_resize(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        term = table.get(args.get("id"))
        size = check_size(args, required=True)
        assert size is not None
        if term.exit_code is None:
            term.resize(*size)
        return {"cols": term.cols, "rows": term.rows}, b""

    async def op_close(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        term = table.get(args.get("id"))
        return {"id": term.id, "exit_code": await table.close(term)}, b""

    async def op_list(link: Link, ch: Channel, args: dict[str, Any], payload: bytes) -> Reply:
        now = time.monotonic()
        out = []
        for term in table.terms.values():
            info = term.info()
            idle = term.detached_at
            info["detached_for"] = None if idle is None else round(now - idle, 3)
            out.append(info)
        return out, b""

    return {
        "pty_open": op_open,
        "pty_attach": op_attach,
        "pty_input": op_input,
        "pty_resize": op_resize,
        "pty_close": op_close,
        "pty_list": op_list,
    }
