"""What the host puts on an allowlist vm's container: the supervisor's switch (an
environment variable) and the allowlist itself (a label, read back on adoption)."""

from __future__ import annotations

import json
from typing import Any

from vm_images.supervisor.egress import EGRESS_ENV

EGRESS_LABEL = "agentvm.egress"


def container_env(allow: list[str] | None) -> dict[str, str]:
    """Tells the supervisor to start its proxy forwarder and set the proxy env."""
    return {EGRESS_ENV: "1"} if allow else {}


def container_labels(allow: list[str] | None) -> dict[str, str]:
    return {EGRESS_LABEL: json.dumps(sorted(allow))} if allow else {}


def allow_from_labels(labels: dict[str, Any]) -> list[str] | None:
    """The allowlist a container was created with (labels are set by the host and
    cannot be changed from inside the container); None when it has none."""
    raw = labels.get(EGRESS_LABEL)
    if not raw:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None
