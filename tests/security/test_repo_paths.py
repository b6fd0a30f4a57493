"""No caller-chosen host paths: a ``fixBug``/``codeReview`` request naming a host path
outside ``AGENTVM_REPO_ROOTS`` is refused at send time (400 naming ``body.repo``),
and a caller's local repository travels as an uploaded bundle (``POST /blobs``).

The attacker here is an HTTP caller — e.g. sandbox code that reached the API, as in
issue 8 — sending raw requests against a live server process."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator import create_client
from tests.server.live import LiveServer, agentvm, start_server

# The built-in orchestrators as `agentvm serve` builds them (policy from the
# environment), their workflows off: accepted messages stay queued.
BUILTINS = "tests.security.repo_paths_registry:build"
ISSUE = "add(2, 3) returns -1"


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """An allowlisted root holding one project, and traps pointing out of it."""
    root = tmp_path / "projects"
    (root / "calc").mkdir(parents=True)
    (root / "calc" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "to-etc").symlink_to("/etc")
    (root / "to-proc").symlink_to("/proc/self")
    (root / "to-home").symlink_to(tmp_path)
    (tmp_path / "outside").mkdir()
    return root


def _server(tmp_path: Path, env: dict[str, str]) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "api.db", registry=BUILTINS, env=env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(tmp_path: Path, roots: Path) -> Iterator[LiveServer]:
    yield from _server(tmp_path, {"AGENTVM_REPO_ROOTS": f"{tmp_path}/none:{roots}"})


@pytest.fixture
def closed_server(tmp_path: Path) -> Iterator[LiveServer]:
    env = {"AGENTVM_REPO_ROOTS": "", "AGENTVM_MAX_BLOB": "4096"}
    yield from _server(tmp_path, env)


def _send(url: str, queue: str, body: dict[str, object]) -> httpx.Response:
    actor = "automator" if queue == "fixBug" else "pipeline"
    return httpx.post(f"{url}/actors/{actor}/main/queues/{queue}", json={"body": body}, timeout=30)


def _queued(url: str, actor: str) -> list[object]:
    resp = httpx.get(f"{url}/actors/{actor}/main/inspector/queue", timeout=30)
    assert resp.status_code == 200, resp.text
    messages: list[object] = resp.json()["messages"]
    return messages


def _assert_refused(resp: httpx.Response, *hints: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["metadata"]["field"] == "body.repo", error
    for hint in hints:
        assert hint in error["message"], error["message"]


def test_host_paths_outside_the_roots_are_refused_at_send_time(
    server: LiveServer, roots: Path, tmp_path: Path
) -> None:
    attacks = [
        "/proc/self/environ",  # the server's environment, with the API key
        "/proc/1/root/etc",
        "/etc",
        "/",
        str(roots / "to-etc"),  # a symlink inside the root pointing out
        str(roots / "to-proc"),
        str(roots / "to-home" / "outside"),
        f"{roots}/../outside",  # '..' out of the root
        f"{roots}/calc/../../outside",
        str(tmp_path / "outside"),
        "calc",  # relative: to the server's working directory
        "~/.ssh",
    ]
    for repo in attacks:
        _assert_refused(
            _send(server.url, "fixBug", {"repo": repo, "issue": ISSUE}), "AGENTVM_REPO_ROOTS"
        )
        _assert_refused(
            _send(server.url, "codeReview", {"repo": repo, "file_path": "/home/user/repo/a.py"})
        )
    # A path inside a root that does not exist is a clear 400 too.
    _assert_refused(
        _send(server.url, "fixBug", {"repo": str(roots / "nope"), "issue": ISSUE}), "not exist"
    )
    # A malformed blob reference cannot smuggle a path either.
    _assert_refused(
        _send(server.url, "fixBug", {"repo": "blob:../../etc/passwd", "issue": ISSUE}), "sha256"
    )
    # Nothing was queued: no run, no vm, no host file copied anywhere.
    assert _queued(server.url, "automator") == []
    assert _queued(server.url, "pipeline") == []

    # Inside the root (also through a symlink that stays inside) is accepted.
    ok = _send(server.url, "fixBug", {"repo": str(roots / "calc"), "issue": ISSUE})
    assert ok.status_code == 200, ok.text
    (roots / "alias").symlink_to(roots / "calc")
    ok = _send(server.url, "fixBug", {"repo": str(roots / "alias"), "issue": ISSUE})
    assert ok.status_code == 200, ok.text


def test_without_roots_every_host_path_is_refused_with_how_to_allow_it(
    closed_server: LiveServer, roots: Path
) -> None:
    resp = _send(closed_server.url, "fixBug", {"repo": str(roots / "calc"), "issue": ISSUE})
    _assert_refused(resp, "AGENTVM_REPO_ROOTS=", "upload a local path")
    assert _queued(closed_server.url, "automator") == []
    # URLs are not host paths: accepted (cloned inside the vm).
    url_repo = {"repo": "https://example.com/calc.git", "issue": ISSUE}
    assert _send(closed_server.url, "fixBug", url_repo).status_code == 200


def test_blob_upload_is_bounded_atomic_and_content_addressed(
    closed_server: LiveServer, tmp_path: Path
) -> None:
    url = closed_server.url
    blobs = tmp_path / "blobs"
    data = b"bundle-bytes" * 100
    digest = hashlib.sha256(data).hexdigest()

    # Only raw octet-stream bodies (a browser cannot send that cross-site unasked).
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        resp = httpx.post(f"{url}/blobs", content=data, headers={"content-type": ctype})
        assert resp.status_code == 415, (ctype, resp.text)

    raw = {"content-type": "application/octet-stream"}
    resp = httpx.post(f"{url}/blobs", content=data, headers=raw)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"blob": f"sha256:{digest}", "size": len(data)}
    assert (blobs / digest).read_bytes() == data
    assert httpx.head(f"{url}/blobs/sha256:{digest}").status_code == 200

    # Over AGENTVM_MAX_BLOB (4096 here): 413, declared or streamed, nothing kept.
    big = b"x" * 5000
    resp = httpx.post(f"{url}/blobs", content=big, headers=raw)
    assert resp.status_code == 413, resp.text

    def streamed() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    resp = httpx.post(f"{url}/blobs", content=streamed(), headers=raw)
    assert resp.status_code == 413, resp.text
    assert sorted(p.name for p in blobs.iterdir()) == [digest]

    # Ids are hashes, never paths.
    for bad in ("..%2F..%2Fetc%2Fpasswd", "sha256:xyz", f"md5:{digest}"):
        assert httpx.head(f"{url}/blobs/{bad}").status_code in (400, 404)
        resp = httpx.delete(f"{url}/blobs/{bad}")
        assert resp.status_code in (400, 404), resp.text
    assert httpx.delete(f"{url}/blobs/sha256:{digest}").status_code == 200
    assert not (blobs / digest).exists()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "mine"
    repo.mkdir()
    (repo / "a.py").write_text("print('hi')\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e")
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "a"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo


async def test_the_client_uploads_a_local_repository_instead_of_sending_its_path(
    closed_server: LiveServer, tmp_path: Path, git_repo: Path
) -> None:
    """The server allows no host paths, yet ``send`` with a local path works: the
    client bundles it, uploads it and sends the blob reference."""
    repo = git_repo
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "b.txt").write_text("plain directory\n")

    # Tiny limit on this server: a bundle of a 1-file repo fits in 4096 bytes.
    async with create_client(closed_server.url) as client:
        automator = client.automator.get_or_create("main")
        for path in (repo, plain):
            sent = await automator.send("fixBug", {"repo": str(path), "issue": ISSUE})
            assert sent.status == "queued"
    queued = _queued(closed_server.url, "automator")
    refs = [m["body"]["repo"] for m in queued]  # type: ignore[index]
    assert len(refs) == 2 and all(r.startswith("blob:sha256:") for r in refs), refs
    for ref in refs:
        stored = tmp_path / "blobs" / ref.removeprefix("blob:sha256:")
        head = stored.read_bytes()[:40]
        assert head.startswith(b"# v2 git bundle") or head.startswith(b"# v3 git bundle"), head

    # The CLI does the same (relative to its working directory).
    result = agentvm(
        "send", "automator", "cli", "fixBug", f'{{"repo": "{repo}", "issue": "x"}}',
        "--url", closed_server.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cli_queued = _queued_key(closed_server.url, "automator", "cli")
    assert cli_queued[0]["body"]["repo"].startswith("blob:sha256:")


def _queued_key(url: str, actor: str, key: str) -> list[dict[str, dict[str, str]]]:
    resp = httpx.get(f"{url}/actors/{actor}/{key}/inspector/queue", timeout=30)
    assert resp.status_code == 200, resp.text
    messages: list[dict[str, dict[str, str]]] = resp.json()["messages"]
    return messages
