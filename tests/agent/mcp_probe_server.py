"""A small MCP server for tests (standard library only: the ``mcp`` package is not in
the sandbox image). Tool ``probe(word)`` writes ``mcp_probe_ran`` in its working
directory (the proof that it ran, and where) and answers
``probe:<word>:<hostname>:<cwd>``.

    python3 mcp_probe_server.py             # stdio (newline-delimited JSON-RPC)
    python3 mcp_probe_server.py --http PORT # streamable HTTP on 127.0.0.1:PORT
"""

from __future__ import annotations

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

TOOL = {
    "name": "probe",
    "description": "Echo a word back, with where the server runs.",
    "inputSchema": {
        "type": "object",
        "properties": {"word": {"type": "string"}},
        "required": ["word"],
    },
}


def handle(msg: dict[str, Any]) -> dict[str, Any] | None:
    method, rid = msg.get("method"), msg.get("id")
    if rid is None:  # a notification
        return None
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "probe", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call":
        word = str(msg["params"]["arguments"].get("word", ""))
        answer = f"probe:{word}:{socket.gethostname()}:{os.getcwd()}"
        with open("mcp_probe_ran", "a") as f:
            f.write(answer + "\n")
        result = {"content": [{"type": "text", "text": answer}], "isError": False}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def stdio() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        answer = handle(json.loads(line))
        if answer is not None:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        answer = handle(body)
        if answer is None:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        # As an SSE stream, like the mcp package's servers answer.
        data = f"event: message\ndata: {json.dumps(answer)}\n\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("mcp-session-id", "probe-session")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        HTTPServer(("127.0.0.1", int(sys.argv[2])), Http).serve_forever()
    else:
        stdio()
