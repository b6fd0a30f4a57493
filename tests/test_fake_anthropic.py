"""The fake Messages API against the real ``anthropic`` SDK."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from tests.support.fake_anthropic import FakeAnthropic, Turn, text, thinking, tool_use

MODEL = "claude-fake-1"


def client(fake: FakeAnthropic, **kwargs: object) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-test", max_retries=0, **kwargs)  # type: ignore[arg-type]


async def test_create_plays_a_text_turn_and_records_the_request(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.script(
        Turn.text("Hello", " there", usage={"input_tokens": 7, "output_tokens": 3})
    )
    async with client(fake_anthropic, default_headers={"x-agentvm-session": "s-1"}) as c:
        msg = await c.messages.create(
            model=MODEL,
            max_tokens=100,
            system="be brief",
            messages=[{"role": "user", "content": "hi"}],
        )
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello there"
    assert msg.stop_reason == "end_turn"
    assert msg.model == MODEL
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 3)
    [req] = fake_anthropic.requests
    assert req.path == "/v1/messages"
    assert req.api_key == "sk-test"
    assert req.headers["x-agentvm-session"] == "s-1"
    assert req.body["system"] == "be brief"
    assert req.body["messages"] == [{"role": "user", "content": "hi"}]


async def test_stream_sends_text_deltas_and_final_usage(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Turn.text("a", "b", "c", usage={"input_tokens": 5, "output_tokens": 9}))
    async with client(fake_anthropic) as c:
        async with c.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            deltas = [event.text async for event in stream if event.type == "text"]
            final = await stream.get_final_message()
    assert deltas == ["a", "b", "c"]
    assert final.content[0].type == "text" and final.content[0].text == "abc"
    assert final.usage.output_tokens == 9 and final.usage.input_tokens == 5
    assert fake_anthropic.requests[0].body["stream"] is True


async def test_stream_tool_use_turn_then_text_turn(fake_anthropic: FakeAnthropic) -> None:
    call = tool_use("edit", {"path": "a.py", "old_string": "x = 1", "new_string": "x = 2"})
    fake_anthropic.script(Turn([text("Editing."), call]), Turn.text("Done."))
    async with client(fake_anthropic) as c:
        async with c.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "fix"}]
        ) as stream:
            first = await stream.get_final_message()
        assert first.stop_reason == "tool_use"
        block = first.content[1]
        assert block.type == "tool_use"
        assert (block.id, block.name, block.input) == (call.id, "edit", call.input)
        second = await c.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[
                {"role": "user", "content": "fix"},
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "ok"}],
                },
            ],
        )
    assert second.content[0].type == "text" and second.content[0].text == "Done."
    assert fake_anthropic.requests[1].tool_results()[call.id]["content"] == "ok"


async def test_thinking_blocks_stream(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Turn([thinking("hmm", "m"), text("ok")]))
    async with client(fake_anthropic) as c:
        async with c.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "q"}]
        ) as stream:
            thoughts = [e.thinking async for e in stream if e.type == "thinking"]
            final = await stream.get_final_message()
    assert thoughts == ["hmm", "m"]
    assert final.content[0].type == "thinking" and final.content[0].signature == "sig-fake"


async def test_scripts_are_matched_by_marker(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Turn.text("for A"), marker="[conv-a]")
    fake_anthropic.script(Turn.text("for B"), marker="[conv-b]")
    fake_anthropic.script(Turn.text("anyone"))
    async with client(fake_anthropic) as c:

        async def ask(prompt: str) -> str:
            msg = await c.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": prompt}]
            )
            block = msg.content[0]
            assert block.type == "text"
            return block.text

        assert await ask("please [conv-b]") == "for B"
        assert await ask("no marker") == "anyone"
        assert await ask("[conv-a] too") == "for A"
        with pytest.raises(anthropic.BadRequestError, match="no scripted turn"):
            await ask("[conv-a] again")


async def test_error_turns_and_count_tokens(fake_anthropic: FakeAnthropic) -> None:
    busy = Turn.fail(529, "overloaded_error", "busy")
    fake_anthropic.script(busy, busy, Turn.text("recovered"))
    async with client(fake_anthropic) as c:
        with pytest.raises(anthropic.APIStatusError) as info:
            await c.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 529
        count = await c.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "count me"}]
        )
        assert count.input_tokens > 0
    # with retries on, the SDK's retry plays the next turn
    async with client(fake_anthropic).with_options(max_retries=2) as c:
        msg = await c.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert msg.content[0].type == "text" and msg.content[0].text == "recovered"
    assert [r.turn.error is not None for r in fake_anthropic.message_requests() if r.turn] == [
        True,
        True,
        False,
    ]


async def test_a_paused_turn_holds_the_stream_until_released(
    fake_anthropic: FakeAnthropic,
) -> None:
    gate = fake_anthropic.gate()
    fake_anthropic.script(Turn.text("first", " second", wait_for=gate))
    got: list[str] = []
    first_seen = asyncio.Event()
    async with client(fake_anthropic) as c:

        async def consume() -> None:
            async with c.messages.stream(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                async for event in stream:
                    if event.type == "text":
                        got.append(event.text)
                        first_seen.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_seen.wait(), 10)
        assert got == ["first"] and not task.done()
        gate.set()
        await asyncio.wait_for(task, 10)
    assert got == ["first", " second"]


def test_reachable_on_all_interfaces() -> None:
    with FakeAnthropic(host="0.0.0.0") as fake:
        fake.script(Turn.text("hi"))
        sync = anthropic.Anthropic(base_url=fake.url, api_key="k", max_retries=0)
        msg = sync.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
        sync.close()
        assert msg.content[0].type == "text"
        assert fake.url.startswith("http://127.0.0.1:")
        assert fake.url_for("172.17.0.1") == f"http://172.17.0.1:{fake.port}"
