"""In-process forwarding: a call that meets :class:`NotOwner` is made again over HTTP
to the owner (``orchestrator.remote``'s transport), as the HTTP server forwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ActorNotFound, NotOwner

if TYPE_CHECKING:
    from ..engine import Engine
    from ..remote import HttpTransport

FORWARDED_HEADER = "x-agentvm-forwarded"


async def remote_transport(engine: Engine, exc: NotOwner, actor_id: str) -> HttpTransport:
    """An HTTP transport to the owner named by ``exc`` that knows ``actor_id``."""
    member = engine.cluster
    url = exc.metadata.get("owner_url")
    if member is None or not url:
        raise exc
    transport = _transports(member).get(url)
    if transport is None:
        import httpx

        from ..remote import HttpTransport

        headers = {FORWARDED_HEADER: member.host_id}
        if member.api_token:
            headers["Authorization"] = f"Bearer {member.api_token}"
        # Between two bytes: a send's longest wait by default (an hour) and a margin.
        timeout = httpx.Timeout(connect=5.0, read=3660.0, write=60.0, pool=30.0)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        client = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits)
        transport = HttpTransport(url, client=client, upload_repos=False)
        _transports(member)[url] = transport
    # The HTTP contract names actors by type and key: look the id up once.
    if actor_id not in transport._refs:
        rec = await engine.store.get_actor(actor_id)
        if rec is None:
            raise ActorNotFound(f"no actor with id {actor_id!r}", actor_id=actor_id)
        transport._refs[actor_id] = (rec.name, rec.key, False)
    return transport


async def forward_call(
    engine: Engine, transport: HttpTransport, method: str, actor_id: str, *args: Any, **kw: Any
) -> Any:
    """``transport.<method>(actor_id, ...)`` on the owner; an owner that does not
    answer is :class:`OwnerMoving` (retry: the next claim asks the database)."""
    import httpx

    from .member import OwnerMoving

    try:
        return await getattr(transport, method)(actor_id, *args, **kw)
    except httpx.TransportError as err:
        if engine.cluster is not None:
            engine.cluster.forget_owner(actor_id)
        raise OwnerMoving(
            f"the owner of actor {actor_id} at {transport.url} did not answer: {err}",
            actor_id=actor_id,
        ) from err


def _transports(member: Any) -> dict[str, HttpTransport]:
    remotes: dict[str, HttpTransport] = member.remotes
    return remotes


async def close_transports(member: Any) -> None:
    for transport in list(_transports(member).values()):
        try:
            await transport.aclose()
        except Exception:  # closing a pool of idle connections; nothing to do about it
            pass
    _transports(member).clear()
