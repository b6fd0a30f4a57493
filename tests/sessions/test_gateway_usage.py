"""Token usage read from a streamed answer (host/gateway/usage.py): only the events
that carry usage are decoded, whatever the text deltas say."""

from __future__ import annotations

import json

from host.gateway.usage import SSEUsage


def event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def test_usage_from_a_stream_split_anywhere_with_deltas_that_mention_usage() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 11}}}
    text = '"message_delta" {"usage": {"output_tokens": 999}}'
    tricky = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}}
    body = b"".join(
        [
            event("message_start", start),
            *[event("content_block_delta", tricky)] * 50,
            event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}),
            event("message_stop", {"type": "message_stop"}),
        ]
    )
    for step in (1, 7, len(body)):
        sse = SSEUsage()
        for at in range(0, len(body), step):
            sse.feed(body[at : at + step])
        assert sse.usage is not None
        assert (sse.usage.input_tokens, sse.usage.output_tokens) == (11, 7)
