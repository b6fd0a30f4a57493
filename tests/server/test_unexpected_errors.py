"""A server fault answers 500 in the error shape and does not re-raise (which would
make uvicorn drop the client's keep-alive connection)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from host.server.middleware import UnexpectedErrorMiddleware


async def _broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom")


async def test_a_fault_is_a_500_in_the_error_shape_and_not_re_raised() -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    await UnexpectedErrorMiddleware(_broken)(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert body["error"]["group"] == "server" and "boom" in body["error"]["message"]
