"""``GET /sessions/stats``: the agent sessions of every vm of this host, summed.

Read from the host process's session managers (``host.sessions.features``), not the
engine: only awake vms have open sessions (an open session keeps its vm awake), so
no vm is woken to answer. Per vm: the vm action ``session_stats``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from host.sessions.features import host_session_stats
from host.sessions.models import SessionStats

from .common import ERRORS, reject_unknown_query

router = APIRouter(
    tags=["sessions"], responses=ERRORS, dependencies=[Depends(reject_unknown_query)]
)


@router.get(
    "/sessions/stats",
    summary="Open agent sessions of the host: open, prompting, idle, tokens, limit",
    response_model=SessionStats,
)
async def sessions_stats() -> SessionStats:
    from host.app import HostSettings

    stats = host_session_stats()
    stats.limit = HostSettings().max_sessions
    return stats
