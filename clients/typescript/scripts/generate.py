"""Dump the server's OpenAPI document and generate the client's types from it.

    uv run python clients/typescript/scripts/generate.py          # write both
    uv run python clients/typescript/scripts/generate.py --check  # exit 1 if stale

Writes ``clients/typescript/openapi.json`` (built from ``host.server.app.create_app``,
no server needed) and ``clients/typescript/src/schema.d.ts`` (``openapi-typescript``
on that document; needs ``node_modules``, which ``clients/typescript/build.sh``
installs). Both are committed so the client builds without a server.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

CLIENT = Path(__file__).resolve().parents[1]
SPEC = CLIENT / "openapi.json"
TYPES = CLIENT / "src" / "schema.d.ts"
GENERATOR = CLIENT / "node_modules" / "openapi-typescript" / "bin" / "cli.js"
FIX = "run `uv run python clients/typescript/scripts/generate.py`"


def openapi_document() -> dict[str, Any]:
    """The document ``/openapi.json`` serves (without a token: no security scheme)."""
    from host.server.app import create_app
    from orchestrator import Engine, Registry

    app = create_app(Engine(Registry({})), token="")
    return app.openapi()


METHOD_ORDER = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def spec_text() -> str:
    """The document as committed: a multi-method route's methods come from a set
    (their order varies with the hash seed), so each path's methods are put in a
    fixed order."""
    spec = openapi_document()
    for path, item in spec.get("paths", {}).items():
        rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        spec["paths"][path] = dict(sorted(item.items(), key=lambda kv: rank.get(kv[0], 99)))
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def types_text(spec: str) -> str | None:
    """``openapi-typescript``'s output for ``spec``; None without node or node_modules."""
    node = shutil.which("node")
    if node is None or not GENERATOR.exists():
        return None
    out = subprocess.run(
        [node, str(GENERATOR)],  # no input argument: the document on stdin
        input=spec,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=CLIENT,
    )
    return out.stdout


def _diff(name: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), name, f"{name} (current)"
    )
    return "".join(list(lines)[:60])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    parser.add_argument("--spec-only", action="store_true", help="skip the TypeScript types")
    args = parser.parse_args(argv)
    spec = spec_text()
    types = None if args.spec_only else types_text(spec)
    if args.check:
        stale = []
        if not SPEC.exists() or SPEC.read_text() != spec:
            old = SPEC.read_text() if SPEC.exists() else ""
            stale.append(_diff("openapi.json", old, spec))
        if types is not None and (not TYPES.exists() or TYPES.read_text() != types):
            old = TYPES.read_text() if TYPES.exists() else ""
            stale.append(_diff("src/schema.d.ts", old, types))
        if stale:
            print(f"the TypeScript client is stale: {FIX}\n" + "\n".join(stale), file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(spec)
    if types is None and not args.spec_only:
        print(
            "generate: node or node_modules missing (run clients/typescript/build.sh); "
            "wrote openapi.json only",
            file=sys.stderr,
        )
        return 1
    if types is not None:
        TYPES.write_text(types)
    return 0


if __name__ == "__main__":
    sys.exit(main())
