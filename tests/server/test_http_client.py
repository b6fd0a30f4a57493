"""The Python client over HTTP (async and sync), in the style of the seeds."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator import (
    ActionNotFound,
    ActorAlreadyExists,
    ActorNotFound,
    AgentVMError,
    InvalidRequest,
    QueueNotFound,
    UnknownActorType,
    create_client,
    create_sync_client,
)
from tests.server.live import LiveServer


async def test_seed_style_send_wait_and_actions(server: LiveServer, unique: str) -> None:
    async with create_client(server.url) as client:
        handle = client.worker.get_or_create([unique, "main"])
        queued = await handle.send("parked", {"n": 1})
        assert queued.status == "queued"
        result = await handle.send("requests", {"n": 4}, wait=True, timeout=30)
        assert result.status == "completed" and result.response == {"doubled": 8}
        late = await handle.send("parked", {"n": 2}, wait=True, timeout=0.05)
        assert late.status == "timed_out"
        queue = await handle.queue_contents()
        assert [m.body for m in queue] == [{"n": 1}, {"n": 2}]
        history = await handle.history()
        assert history.is_workflow and history.entries

        counter = client.actors.counter.get_or_create(unique)
        assert await counter.increment(5) == 5
        assert await counter.call("increment", 2) == 7
        assert await counter.fetch_state() == {"count": 7}
        assert await counter.concat(b"\x00\xff", b"!") == b"\x00\xff!"
        assert await counter.echo({"deep": [b"bytes"]}) == {"deep": [b"bytes"]}


async def test_typed_errors_come_back(server: LiveServer, unique: str) -> None:
    async with create_client(server.url) as client:
        with pytest.raises(UnknownActorType):
            await client.nosuch.get_or_create(unique).resolve()
        with pytest.raises(ActionNotFound) as exc:
            await client.counter.get_or_create(unique).frobnicate()
        assert exc.value.metadata["action"] == "frobnicate"
        with pytest.raises(QueueNotFound):
            await client.counter.get_or_create(unique).send("nope", 1)
        with pytest.raises(InvalidRequest):
            await client.counter.get_or_create(unique).increment("lots")
        with pytest.raises(ActorNotFound):
            await client.counter.get(f"{unique}-never").get_count()
        await client.counter.create(f"{unique}-new")
        with pytest.raises(ActorAlreadyExists):
            await client.counter.create(f"{unique}-new")
        with pytest.raises(AgentVMError) as vm_err:
            await client.vm.get_or_create(unique).read_file("/missing")
        assert (vm_err.value.group, vm_err.value.code) == ("vm", "file_not_found")
        assert vm_err.value.http_status == 404


async def test_connect_yields_broadcasts(server: LiveServer, unique: str) -> None:
    async with create_client(server.url) as client:
        handle = client.counter.get_or_create(unique)
        stream = await handle.connect(["changed"])
        try:
            await handle.announce("other", 1)
            await handle.increment(3)
            event = await stream.next(timeout=30)
            assert (event.name, event.payload) == ("changed", {"count": 3})
        finally:
            await stream.close()


async def test_destroy_and_list(server: LiveServer, unique: str) -> None:
    async with create_client(server.url) as client:
        handle = client.counter.get_or_create(unique)
        await handle.increment(1)
        ids = {a.actor_id for a in await client.counter.list()}
        assert await handle.resolve() in ids
        await handle.destroy()
        # a get_or_create handle makes a fresh actor on next use
        assert await handle.get_count() == 0


async def test_concurrent_calls(server: LiveServer, unique: str) -> None:
    async with create_client(server.url) as client:
        handle = client.counter.get_or_create(unique)
        await asyncio.gather(*(handle.increment(1) for _ in range(50)))
        assert await handle.get_count() == 50


def test_sync_client(server: LiveServer, unique: str) -> None:
    with create_sync_client(server.url) as client:
        handle = client.counter.get_or_create(unique)
        assert handle.increment(2) == 2
        assert handle.fetch_state() == {"count": 2}
        result = client.worker.get_or_create(unique).send(
            "requests", {"n": 5}, wait=True, timeout=30
        )
        assert result.status == "completed" and result.response == {"doubled": 10}
        with handle.connect() as events:
            handle.increment(1)
            event = events.next(timeout=30)
            assert (event.name, event.payload) == ("changed", {"count": 3})
        with pytest.raises(ActionNotFound):
            handle.nope()
        assert any(a.name == "counter" for a in client.list_actors())
