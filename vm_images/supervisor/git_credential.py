"""git credential helper: asks the host, through the egress proxy's loopback port.

Configured by the supervisor's environment (``egress.egress_env``) as
``python3 -I -m agentvm_supervisor.git_credential <port> <action>``. Only ``get``
asks; ``store`` and ``erase`` do nothing (nothing is ever kept in the sandbox).
The host answers only for host names in the vm's allowlist (docs/egress.md).
"""

from __future__ import annotations

import http.client
import sys

from .egress import CREDENTIAL_PATH

MAX_INPUT = 16 * 1024
TIMEOUT = 30.0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: git_credential <port> get|store|erase", file=sys.stderr)
        return 2
    port, action = int(argv[0]), argv[1]
    body = sys.stdin.buffer.read(MAX_INPUT)
    if action != "get":
        return 0
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("POST", CREDENTIAL_PATH, body, {"content-type": "text/plain"})
        resp = conn.getresponse()
        answer = resp.read(MAX_INPUT)
    except OSError as exc:
        print(f"agentvm credential helper: {exc}", file=sys.stderr)
        return 0  # git goes on without a credential
    if resp.status == 200:
        sys.stdout.buffer.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
