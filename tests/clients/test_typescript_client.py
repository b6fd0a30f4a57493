"""The TypeScript client (clients/typescript): generated types current, type-checked,
and run with Node against a live server (actions, waiting sends, ``$bytes``, runs,
SSE, typed 4xx errors)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.keys import encode_key_path
from tests.server.live import LiveServer, start_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built() -> Path:
    """dist/ built (a no-op when setup already built it from the same sources)."""
    out = _run(str(CLIENT / "build.sh"))
    assert out.returncode == 0, out.stderr
    bundle = CLIENT / "dist" / "agentvm-client.mjs"
    assert bundle.exists()
    return bundle


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("ts") / "agentvm.db", token="ts-secret")
    yield server
    assert server.stop() == 0


def test_generated_files_are_current(built: Path) -> None:
    """openapi.json and src/schema.d.ts match the app's routes (as test_config_doc)."""
    out = _run(sys.executable, str(CLIENT / "scripts" / "generate.py"), "--check")
    assert out.returncode == 0, out.stderr


def test_client_type_checks(built: Path) -> None:
    tsc = str(CLIENT / "node_modules" / "typescript" / "bin" / "tsc")
    assert NODE is not None
    out = _run(NODE, tsc, "--noEmit", "-p", str(CLIENT / "tsconfig.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    # Typed registries: wrong argument types and unknown actions are compile errors.
    out = _run(NODE, tsc, "--noEmit", "-p", str(CLIENT / "test" / "tsconfig.json"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_bundle_is_self_contained(built: Path) -> None:
    """One ESM file the console can import: no imports of its own, no require()."""
    text = built.read_text()
    assert not re.search(r"^\s*(import|export)\b[^\n]*\bfrom\s*[\"']", text, re.M)
    assert not re.search(r"^\s*import\s*[\"'(]", text, re.M)
    assert "require(" not in text
    assert re.search(r"^export\s*\{[^}]*\bcreateClient\b", text, re.M)


def test_smoke_against_live_server(built: Path, live: LiveServer) -> None:
    assert NODE is not None
    out = _run(NODE, str(CLIENT / "test" / "smoke.mjs"), live.url, "ts-secret", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "smoke: ok" in out.stdout


def test_wrong_token_is_a_typed_401(built: Path, live: LiveServer) -> None:
    script = (
        f"import {{ createClient, ClientError }} from {str(built.as_uri())!r};\n"
        f"const c = createClient({{ baseUrl: {live.url!r}, token: 'wrong' }});\n"
        "try { await c.listRuns(); console.log('no error'); }\n"
        "catch (e) { console.log(e instanceof ClientError, e.status, e.group + '/' + e.code); }\n"
    )
    assert NODE is not None
    out = _run(NODE, "--input-type=module", "-e", script, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "true 401 auth/unauthorized"


def test_keys_sse_and_bytes_without_a_server(built: Path) -> None:
    """Keys encode exactly as Python's encode_key_path; the SSE parser and the $bytes
    codec hold on edge cases (chunks split inside characters, CRLF, 1 MiB)."""
    keys = [
        ["fix", "42"],
        ["a,b"],
        ["c/d", "e f"],
        ["ünï"],
        ["it's (x)*!~-_.", "%2C"],
        ['?#&=+;:@$[]{}|\\^`"<>'],
        ["日本", "🙂"],
    ]
    assert NODE is not None
    out = _run(NODE, str(CLIENT / "test" / "unit.mjs"), json.dumps(keys), timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["keys"] == [encode_key_path(tuple(k)) for k in keys]
