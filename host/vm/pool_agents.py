"""Agents pre-started in warm-pool containers, handed to the vm that takes one.

A vm's session manager keeps one agent per pre-start type started and initialized
(docs/sessions.md, "Pre-started agents"), but it can only start it once the vm has
its container: a vm taken from the warm pool would make its first
``create_session`` wait for the agent's start (the standard-library coding agent:
~60-80 ms; SDK-based agents: ~1 s of imports). So the pool starts them already:
each pool container gets a :class:`SessionManager` of its own that pre-starts the
agents its image carries (``AGENTVM_PRESTART_AGENTS``); when a vm takes the
container, its session manager adopts them (:func:`adopt_pool_agents`). The pool
container stays generic: a pre-started agent has no session, cwd, model or
caller env until ``session/new`` gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from host.sandbox import Sandbox
from host.sessions import SessionManager
from host.sessions.limits import EventGate

log = logging.getLogger("agentvm.vm")

# How long dropping one container's pool agents may take (kill, wait, detach).
DROP_TIMEOUT = 10.0

# The pre-starting session manager of each warm-pool container not yet taken.
_AGENTS: weakref.WeakKeyDictionary[Sandbox, SessionManager] = weakref.WeakKeyDictionary()


def start_pool_agents(sandbox: Sandbox, bundles: Sequence[str]) -> None:
    """Pre-start, in the background, the agents a pool container's image carries."""
    from .sessions import _prestart_types, _settings

    types = _prestart_types(list(bundles))
    if not types or sandbox in _AGENTS:
        return
    sm = SessionManager(sandbox, prestart=types, limits=_settings().session_limits())
    sm.warm_up()
    _AGENTS[sandbox] = sm


async def adopt_pool_agents(sm: SessionManager, sandbox: Sandbox) -> None:
    """Move the pre-started agents of a just-taken pool container to the vm's
    session manager ``sm`` (the types it pre-starts; the others are killed)."""
    pool = _AGENTS.pop(sandbox, None)
    if pool is None:
        return
    for agent_type, task in list(pool._warm.items()):
        if agent_type in sm.prestart and agent_type not in sm._warm:
            del pool._warm[agent_type]
            handed = asyncio.ensure_future(_hand_over(task, sm))
            handed.add_done_callback(_retrieve)
            sm._warm[agent_type] = handed
    await _close(pool)


async def _hand_over(task: asyncio.Task[Any], sm: SessionManager) -> Any:
    """The pool's pre-start, its session rebound to ``sm`` (events, limits)."""
    session, init = await task
    session.manager = sm
    session.limits = sm.limits
    session.gate = EventGate(sm.limits)
    return session, init


async def drop_pool_agents(sandboxes: Iterable[Sandbox]) -> None:
    """Kill the pre-started agents of pool containers nobody will take (bounded)."""
    pools = [pool for sb in sandboxes if (pool := _AGENTS.pop(sb, None)) is not None]
    if pools:
        await asyncio.gather(*(_close(pool) for pool in pools))


async def wait_pool_agents(sandboxes: Iterable[Sandbox]) -> None:
    """Until the pool containers' agents are initialized (or failed); for benchmarks."""
    for sb in list(sandboxes):
        pool = _AGENTS.get(sb)
        if pool is not None:
            await pool.wait_prestarted()


async def _close(pool: SessionManager) -> None:
    try:
        async with asyncio.timeout(DROP_TIMEOUT):
            await pool.close()
    except (TimeoutError, Exception) as exc:  # the container's removal ends them anyway
        log.info("dropping pre-started agents of %s: %r", pool.sandbox.name, exc)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()  # a failed pre-start is logged when taken
